"""``lowspace info CONFIG_OR_PRESET``: parameters, stage widths, depths, output shapes, attention tokens."""
from __future__ import annotations

from . import command_help


def add_parsers(sub) -> None:
    p = sub.add_parser("info", help=command_help("info"), description=command_help("info"))
    p.add_argument("config", help="preset name (b0, b1, b15, b2, b3, e1, e2, e3) or YAML config path")
    p.add_argument("--resolution", type=int, default=None, help="input side (default: the config's)")
    p.set_defaults(func=run)


def describe(spec, resolution: int | None = None) -> dict:
    """Everything ``lowspace info`` prints, as a dict (the model is built on the meta device: no memory)."""
    import torch

    from ..arch import LowFormer, feature_shapes, resolve_config
    cfg = resolve_config(spec)
    if resolution is not None:
        cfg = cfg.replace(resolution=resolution)
    with torch.device("meta"):
        model = LowFormer(cfg, init="torch")
        x = torch.empty(1, cfg.in_chans, cfg.resolution, cfg.resolution)
        maps = [model.stem(x), *model.forward_intermediates(x, intermediates_only=True)]
    rows = []
    parts = [model.stem, *model.stages]
    for shape, part, fmap in zip(feature_shapes(cfg), parts, maps):
        rows.append(dict(name=shape.name, width=shape.channels, depth=shape.depth,
                         params=sum(p.numel() for p in part.parameters()),
                         output=tuple(fmap.shape[1:]), attention_blocks=list(shape.attention_blocks),
                         attention_tokens=shape.attention_tokens, heads=shape.heads, head_dim=shape.head_dim))
    rows.append(dict(name="head", width=model.head.num_features, depth=0,
                     params=sum(p.numel() for p in model.head.parameters()), output=(cfg.num_classes,),
                     attention_blocks=[], attention_tokens=0, heads=0, head_dim=0))
    info = dict(name=cfg.name, arch_id=cfg.arch_id, resolution=cfg.resolution,
                params=sum(p.numel() for p in model.parameters()), rows=rows)
    try:
        from ..cost.count import count_macs
        info["macs"] = count_macs(cfg, resolution=cfg.resolution)
    except ImportError:  # the cost engine is optional for describing an architecture
        pass
    return info


def run(args) -> int:
    from rich.console import Console
    from rich.table import Table

    info = describe(args.config, args.resolution)
    console = Console(width=max(Console().width, 100))
    title = f"{info['name'] or args.config}  arch_id {info['arch_id']}  input {info['resolution']}px"
    table = Table(title=title)
    for col in ("part", "width", "depth", "params", "output CxHxW", "attn blocks", "tokens", "heads"):
        table.add_column(col, justify="left" if col in ("part", "attn blocks") else "right", no_wrap=True)
    for r in info["rows"]:
        blocks = r["attention_blocks"]
        att = "all" if blocks and len(blocks) == r["depth"] else (",".join(map(str, blocks)) or "-")
        hd = f"{r['heads']}x{r['head_dim']}" if r["heads"] else "-"
        table.add_row(r["name"], str(r["width"]), str(r["depth"]), f"{r['params']:,}",
                      "x".join(map(str, r["output"])), att, str(r["attention_tokens"] or "-"), hd)
    console.print(table)
    line = f"total params: {info['params']:,}"
    if "macs" in info:
        line += f"   MACs: {info['macs']:,} ({info['macs'] / 1e6:,.1f} M)"
    console.print(line)
    return 0
