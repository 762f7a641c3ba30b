"""DeviceGate: worker processes sharing one device train side by side and time alone."""
import multiprocessing as mp
import pickle
import threading

import pytest

from lowspace.search import DeviceGate


def _hold_training(path, started, release):
    with DeviceGate(path).training():
        started.set()
        release.wait(10)


@pytest.mark.slow  # a spawned process
def test_device_gate_times_only_on_an_idle_device(tmp_path):
    """A measurement waits for a running training on the same device, and trainings may overlap."""
    ctx = mp.get_context("spawn")
    path = str(tmp_path / "gpu0.lock")
    started, release = ctx.Event(), ctx.Event()
    trainer = ctx.Process(target=_hold_training, args=(path, started, release))
    trainer.start()
    assert started.wait(30)
    gate = DeviceGate(path)
    with gate.training():  # a second training runs beside the first
        pass
    timed = threading.Event()

    def time_it():
        with gate.timing():
            timed.set()

    t = threading.Thread(target=time_it)
    t.start()
    assert not timed.wait(1.0)  # blocked while the other process trains
    release.set()
    assert timed.wait(10)
    t.join()
    trainer.join(10)


def _hold(side, entered, leave, order, name):
    with side:
        order.append(name)
        entered.set()
        leave.wait(10)


def test_a_waiting_timing_keeps_new_trainings_out(tmp_path):
    gate = DeviceGate(tmp_path / "locks" / "gpu0.lock")  # the folder is made on first use
    order = []
    events = {name: (threading.Event(), threading.Event()) for name in ("first", "timing", "late")}

    def start(name, side):
        thread = threading.Thread(target=_hold, args=(side, *events[name], order, name))
        thread.start()
        return thread

    threads = [start("first", gate.training())]
    assert events["first"][0].wait(10)
    threads.append(start("timing", gate.timing()))
    threading.Event().wait(0.5)  # the timing takes the gate, then waits for the device
    threads.append(start("late", gate.training()))
    assert not events["late"][0].wait(0.5)  # a training that comes later waits behind the timing
    events["first"][1].set()
    assert events["timing"][0].wait(10) and not events["late"][0].is_set()
    events["timing"][1].set()
    assert events["late"][0].wait(10)
    events["late"][1].set()
    for thread in threads:
        thread.join(10)
    assert order == ["first", "timing", "late"]


def test_gate_sides_are_picklable_for_isolated_measurements(tmp_path):
    side = pickle.loads(pickle.dumps(DeviceGate(tmp_path / "gpu.lock").timing()))
    with side:
        pass
    assert (side.path, side.exclusive) == (str(tmp_path / "gpu.lock"), True)
