"""The adapter registry: content-addressed LoRA versions per domain, an active pointer, rollback.

Layout under the project's state folder:
    adapters/<domain>/<sha256>/   adapter_config.json, adapter_model.safetensors (plain PEFT, loadable
                                  by PEFT and vLLM), manifest.json, loss_curve.png
    adapters/<domain>/active.json {"version": ..., "history": [earlier active versions, newest last]}
The version is the SHA-256 of the two PEFT files. Activation and rollback rewrite active.json by
rename, so an interrupted write leaves the old pointer. Every adapter is validated before it is
registered and again before it is activated: safetensors only, hashes match the manifest, same
base model, LoRA shapes fit the base model's layers.
"""
from __future__ import annotations

import hashlib
import json
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from ..atomic import replace_dir, write_text
from ..errors import AdapterError

__all__ = ["AdapterError", "AdapterRef", "Registry", "adapter_version", "check_name", "validate"]

PEFT_FILES = ("adapter_config.json", "adapter_model.safetensors")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
# what `import_folder` keeps of a loradex export's manifest: its training record (hashes are recomputed)
_KEPT_ON_IMPORT = ("hyperparameters", "metrics", "training_data_sha256", "chat_template_sha256",
                   "system_message_sha256", "created_at")


@dataclass(frozen=True)
class AdapterRef:
    """One registered adapter version: its domain, its full SHA-256 version and its folder."""

    domain: str
    version: str
    path: Path

    @property
    def label(self) -> str:
        """`domain@sha256:<first 12 hex digits>`: the name the engine and the answers know it by."""
        return label(self.domain, self.version)


def label(domain: str, version: str) -> str:
    return f"{domain}@sha256:{version[:12]}"


def adapter_version(folder: Path) -> str:
    """SHA-256 over the SHA-256s of the two PEFT files: the version id of an adapter's content."""
    h = hashlib.sha256()
    for name in PEFT_FILES:
        h.update(hashlib.sha256((folder / name).read_bytes()).hexdigest().encode())
    return h.hexdigest()


def check_name(domain: str) -> str:
    """`domain` when it is a valid adapter name; raises AdapterError otherwise."""
    if not _NAME.match(domain):
        raise AdapterError(f"invalid adapter name {domain!r}: use lower-case letters, digits, '-' and '_'")
    return domain


def validate(folder: Path, base: dict, base_shapes: dict[str, tuple[int, ...]], max_rank: int = 256) -> dict:
    """Refuse anything that must not be served on this base; returns the adapter's PEFT config.

    `base` is the base model's identity (`name`, `sha256`), `base_shapes` maps its weight names to shapes.
    Raises AdapterError for pickle files, a missing PEFT file, a non-LoRA type, a rank outside 1..max_rank,
    files that do not match the manifest's hash, another base model, or LoRA shapes the base cannot take."""
    folder = Path(folder)
    if not folder.is_dir():
        raise AdapterError(f"{folder}: no such folder; give a PEFT adapter folder")
    pickles = [p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES]
    if pickles:
        raise AdapterError(f"{folder}: refusing pickle files ({', '.join(pickles)}); only safetensors are loaded")
    missing = [n for n in PEFT_FILES if not (folder / n).is_file()]
    if missing:
        raise AdapterError(f"{folder}: not a PEFT adapter, missing {', '.join(missing)}")
    cfg = json.loads((folder / "adapter_config.json").read_text())
    if cfg.get("peft_type") != "LORA":
        raise AdapterError(f"{folder}: peft_type is {cfg.get('peft_type')!r}, only LORA adapters are served")
    if not 0 < int(cfg.get("r", 0)) <= max_rank:
        raise AdapterError(f"{folder}: rank {cfg.get('r')} is outside 1..{max_rank}")
    manifest_path = folder / "manifest.json"
    if manifest_path.is_file():
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("version") != adapter_version(folder):
            raise AdapterError(f"{folder}: files do not match the manifest's hash (changed or corrupted)")
        if manifest.get("base_model", {}).get("sha256") != base["sha256"]:
            raise AdapterError(f"{folder}: trained for base {manifest.get('base_model', {}).get('name')!r} "
                               f"(sha256 {manifest.get('base_model', {}).get('sha256', '?')[:12]}), "
                               f"but this project serves {base['name']!r} (sha256 {base['sha256'][:12]})")
    _check_shapes(folder, cfg, base_shapes)
    return cfg


def _check_shapes(folder: Path, cfg: dict, base_shapes: dict[str, tuple[int, ...]]) -> None:
    from safetensors import SafetensorError, safe_open

    r = int(cfg["r"])
    try:
        with safe_open(str(folder / "adapter_model.safetensors"), "pt") as f:
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise AdapterError(f"{folder}: adapter_model.safetensors is unreadable ({e})") from None
    if not shapes:
        raise AdapterError(f"{folder}: the adapter holds no weights")
    for key, shape in shapes.items():
        m = re.match(r"^(?:base_model\.model\.)?(.*)\.lora_([AB])(?:\.[^.]+)?\.weight$", key)
        if not m:
            continue
        base_key = m.group(1) + ".weight"
        if base_key not in base_shapes:
            raise AdapterError(f"{folder}: targets {m.group(1)!r}, which the base model does not have")
        out_f, in_f = base_shapes[base_key][:2]
        want = (r, in_f) if m.group(2) == "A" else (out_f, r)
        if shape != want:
            raise AdapterError(f"{folder}: {key} has shape {list(shape)}, the base layer needs {list(want)}")


class Registry:
    """The adapters under `root` (`.loradex/adapters`) for the base model `base` (see `validate`)."""

    def __init__(self, root: Path, base: dict, base_shapes: dict[str, tuple[int, ...]]):
        self.root = Path(root)
        self.base = base
        self.base_shapes = base_shapes

    def _domain_dir(self, domain: str) -> Path:
        return self.root / check_name(domain)

    def _pointer(self, domain: str) -> dict:
        path = self._domain_dir(domain) / "active.json"
        return json.loads(path.read_text()) if path.is_file() else {"version": None, "history": []}

    def register(self, folder: Path, domain: str, manifest: dict) -> AdapterRef:
        """Validate a PEFT folder and copy it in under its content hash, with `manifest` (training record) plus
        the hashes, base model and size (idempotent). Raises AdapterError when it fails validation."""
        check_name(domain)
        validate(folder, self.base, self.base_shapes)
        version = adapter_version(folder)
        dest = self._domain_dir(domain) / version
        if not (dest / "manifest.json").is_file():
            tmp = dest.with_name(f"{version}.tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            for p in Path(folder).iterdir():
                if (p.is_file() and (p.name in PEFT_FILES or p.suffix in (".png", ".json"))
                        and p.name != "manifest.json"):
                    shutil.copy2(p, tmp / p.name)
            full = {**manifest, "domain": domain, "version": version, "base_model": self.base,
                    "files": {n: hashlib.sha256((tmp / n).read_bytes()).hexdigest() for n in PEFT_FILES},
                    "size_bytes": sum((tmp / n).stat().st_size for n in PEFT_FILES),
                    "created_at": manifest.get("created_at", time.time())}
            write_text(tmp / "manifest.json", json.dumps(full, indent=1, sort_keys=True))
            replace_dir(tmp, dest)
        return AdapterRef(domain, version, dest)

    def import_folder(self, folder: Path, domain: str, *, activate: bool = False) -> AdapterRef:
        """Register a PEFT folder trained elsewhere (or a loradex export, whose training record is kept) and
        optionally activate it. Raises AdapterError when it is refused or its manifest is unreadable."""
        folder = Path(folder)
        kept: dict = {}
        if (folder / "manifest.json").is_file():
            try:
                loaded = json.loads((folder / "manifest.json").read_text())
            except (OSError, ValueError) as e:
                raise AdapterError(f"{folder / 'manifest.json'}: unreadable ({e})") from None
            kept = {k: v for k, v in loaded.items() if k in _KEPT_ON_IMPORT}
        ref = self.register(folder, domain, {**kept, "imported_from": str(folder.resolve())})
        if activate:
            self.activate(domain, ref.version)
        return ref

    def export(self, ref: AdapterRef, dest: Path) -> Path:
        """Copy a version out as a plain PEFT folder with its manifest (for another project, PEFT or vLLM).
        Raises AdapterError when `dest` exists."""
        dest = Path(dest)
        if dest.exists():
            raise AdapterError(f"{dest} exists; give a new folder")
        shutil.copytree(ref.path, dest)
        return dest

    def resolve(self, domain: str, version: str | None = None) -> AdapterRef:
        """A version by (a prefix of) its hash, with or without `sha256:`, or the active one. Raises
        AdapterError when none or several match, or the domain has no active version."""
        d = self._domain_dir(domain)
        if version is None:
            version = self._pointer(domain)["version"]
            if version is None:
                raise AdapterError(f"no active adapter for {domain!r}: train one or `loradex adapters activate`")
        version = version.split("sha256:")[-1]
        matches = [p.name for p in d.iterdir()
                   if p.is_dir() and p.name.startswith(version) and not p.name.endswith(".tmp")] \
            if d.is_dir() else []
        if len(matches) != 1:
            raise AdapterError(f"{'no' if not matches else 'ambiguous'} adapter version {version!r} for {domain!r}; "
                               "`loradex adapters list` shows them")
        return AdapterRef(domain, matches[0], d / matches[0])

    def active(self, domain: str) -> AdapterRef | None:
        """The active version of `domain`'s adapter, or None when it has none."""
        if self._pointer(domain)["version"] is None:
            return None
        return self.resolve(domain)

    def manifest(self, ref: AdapterRef) -> dict:
        """The version's manifest.json: hashes, base model, hyperparameters, metrics."""
        return json.loads((ref.path / "manifest.json").read_text())

    def activate(self, domain: str, version: str) -> AdapterRef:
        """Validate a version and make it the domain's active one (the previous one goes on the rollback
        history). Raises AdapterError when it is unknown, ambiguous or fails validation."""
        ref = self.resolve(domain, version)
        validate(ref.path, self.base, self.base_shapes)
        pointer = self._pointer(domain)
        if pointer["version"] != ref.version:
            history = pointer["history"] + ([pointer["version"]] if pointer["version"] else [])
            write_text(self._domain_dir(domain) / "active.json",
                         json.dumps({"version": ref.version, "history": history[-50:], "activated_at": time.time()}))
        return ref

    def rollback(self, domain: str) -> AdapterRef | None:
        """Make the previously active version active again (None: back to the bare base model)."""
        pointer = self._pointer(domain)
        if pointer["version"] is None:
            raise AdapterError(f"{domain!r} has no active adapter to roll back")
        history = list(pointer["history"])
        previous = history.pop() if history else None
        write_text(self._domain_dir(domain) / "active.json",
                     json.dumps({"version": previous, "history": history, "activated_at": time.time()}))
        return self.resolve(domain, previous) if previous else None

    def remove(self, domain: str, version: str) -> AdapterRef:
        """Delete a version that is not active. Raises AdapterError when it is active or unknown."""
        ref = self.resolve(domain, version)
        pointer = self._pointer(domain)
        if ref.version == pointer["version"]:
            raise AdapterError(f"{ref.label} is active: activate another version or roll back first")
        if ref.version in pointer["history"]:
            write_text(self._domain_dir(domain) / "active.json",
                         json.dumps({**pointer, "history": [v for v in pointer["history"] if v != ref.version]}))
        shutil.rmtree(ref.path)
        return ref

    def versions(self) -> list[dict]:
        """Every registered version, by domain then age: domain, version, label, active, size_bytes,
        created_at, metrics."""
        rows = []
        for d in sorted(p for p in self.root.iterdir() if p.is_dir()) if self.root.is_dir() else []:
            active = self._pointer(d.name)["version"]
            for v in sorted((p for p in d.iterdir() if p.is_dir() and not p.name.endswith(".tmp")),
                            key=lambda p: p.stat().st_mtime):
                m = json.loads((v / "manifest.json").read_text())
                rows.append({"domain": d.name, "version": v.name, "label": label(d.name, v.name),
                             "active": v.name == active, "size_bytes": m.get("size_bytes"),
                             "created_at": m.get("created_at"), "metrics": m.get("metrics", {})})
        return rows
