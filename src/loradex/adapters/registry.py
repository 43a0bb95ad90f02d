"""The adapter registry: content-addressed LoRA versions per domain, an active pointer, rollback.

Layout under the project's state folder:
    adapters/<domain>/<sha256>/   adapter_config.json, adapter_model.safetensors (plain PEFT, loadable
                                  by PEFT and vLLM), manifest.json, loss_curve.png
    adapters/<domain>/active.json {"version": ..., "history": [earlier active versions, newest last]}
The version is the SHA-256 of the two PEFT files. Activation and rollback rewrite active.json by
rename, so an interrupted write leaves the old pointer. Every adapter is validated before it is
registered and again before it is activated: safetensors only, hashes match the manifest, same
base model, and every tensor fits the base model (`loradex.adapters.validate`). The manifest records how the
adapter can be batched (`serving`: whether it may share a batch with other adapters, and why not).
"""
from __future__ import annotations

import hashlib
import json
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ..atomic import replace_dir, write_text
from ..errors import AdapterError
from .validate import check_config, check_tensors, serving

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


def same_model_family(named: str, base_name: str) -> bool:
    """Whether `named` (a PEFT config's `base_model_name_or_path`: a hub id or a folder) names the model
    `base_name`: the last path part, lower-cased and kept to letters and digits, contains `base_name` so kept
    ("HuggingFaceTB/SmolLM2-135M-Instruct" and ".../smollm2-135m-b179c9523d0e" name "smollm2-135m";
    "SmolLM2-360M-Instruct" does not)."""
    def kept(s: str) -> str:
        return re.sub(r"[^a-z0-9]", "", s.lower())

    return kept(base_name) in kept(PurePosixPath(named.replace("\\", "/").rstrip("/")).name)


def validate(folder: Path, base: dict, base_shapes: dict[str, tuple[int, ...]], max_rank: int = 256,
             base_dir: Path | None = None, other_base: bool = False) -> dict:
    """Refuse anything that must not be served on this base; returns the adapter's PEFT config.

    `base` is the base model's identity (`name`, `sha256`), `base_shapes` maps its weight names to shapes and
    `base_dir` is its folder (when given, copies of base weights in the adapter must equal the base's).
    Raises AdapterError for pickle files, a missing PEFT file, files that do not match the manifest's hash,
    another base model (the manifest's base hash, or without one the config's `base_model_name_or_path`,
    `same_model_family`; `other_base` accepts a name that differs), a config the shared base cannot serve
    (`validate.check_config`: type, ranks, variants) or a tensor that does not fit the base
    (`validate.check_tensors`)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise AdapterError(f"{folder}: no such folder; give a PEFT adapter folder")
    pickles = [p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES]
    if pickles:
        raise AdapterError(f"{folder}: refusing pickle files ({', '.join(pickles)}); only safetensors are loaded "
                           "(save with PEFT's save_pretrained(safe_serialization=True))")
    missing = [n for n in PEFT_FILES if not (folder / n).is_file()]
    if missing:
        raise AdapterError(f"{folder}: not a PEFT adapter, missing {', '.join(missing)}")
    try:
        cfg = json.loads((folder / "adapter_config.json").read_text())
    except (OSError, ValueError) as e:
        raise AdapterError(f"{folder}: adapter_config.json is unreadable ({e})") from None
    check_config(cfg, folder, max_rank)
    manifest_path = folder / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    named = cfg.get("base_model_name_or_path")
    if not manifest.get("base_model") and named and not other_base and not same_model_family(named, base["name"]):
        raise AdapterError(f"{folder / 'adapter_config.json'}: base_model_name_or_path is {named!r}, but this "
                           f"project serves {base['name']!r}; an adapter trained on another base model answers "
                           "unpredictably on this one. Train it here (`loradex train`), or, if it is this model "
                           "under another name, import it with --allow-other-base")
    if manifest:
        if manifest.get("version") != adapter_version(folder):
            raise AdapterError(f"{folder}: files do not match the manifest's hash (changed or corrupted)")
        if manifest.get("base_model", {}).get("sha256") != base["sha256"]:
            raise AdapterError(f"{folder}: trained for base {manifest.get('base_model', {}).get('name')!r} "
                               f"(sha256 {manifest.get('base_model', {}).get('sha256', '?')[:12]}), "
                               f"but this project serves {base['name']!r} (sha256 {base['sha256'][:12]})")
    check_tensors(folder, cfg, _tensor_shapes(folder), base_shapes, base_dir)
    return cfg


def _tensor_shapes(folder: Path) -> dict[str, tuple[int, ...]]:
    """Saved name -> shape of every tensor in adapter_model.safetensors (header only). Raises AdapterError when
    the file is unreadable or holds no tensor."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(folder / "adapter_model.safetensors"), "pt") as f:
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise AdapterError(f"{folder}: adapter_model.safetensors is unreadable ({e})") from None
    if not shapes:
        raise AdapterError(f"{folder}: the adapter holds no weights")
    return shapes


class Registry:
    """The adapters under `root` (`.loradex/adapters`) for the base model `base` with weight shapes `base_shapes`,
    stored in `base_dir` (see `validate`; without `base_dir`, copies of base weights are checked by shape only)."""

    def __init__(self, root: Path, base: dict, base_shapes: dict[str, tuple[int, ...]], base_dir: Path | None = None):
        self.root = Path(root)
        self.base = base
        self.base_shapes = base_shapes
        self.base_dir = base_dir

    def _domain_dir(self, domain: str) -> Path:
        return self.root / check_name(domain)

    def _pointer(self, domain: str) -> dict:
        path = self._domain_dir(domain) / "active.json"
        return json.loads(path.read_text()) if path.is_file() else {"version": None, "history": []}

    def register(self, folder: Path, domain: str, manifest: dict, other_base: bool = False) -> AdapterRef:
        """Validate a PEFT folder and copy it in under its content hash, with `manifest` (training record) plus
        the hashes, base model, size and `serving` (whether it can join a mixed-adapter batch, and why not;
        see `validate.serving`) (idempotent). Raises AdapterError when it fails validation (`other_base`: see
        `validate`)."""
        check_name(domain)
        cfg = validate(folder, self.base, self.base_shapes, base_dir=self.base_dir, other_base=other_base)
        version = adapter_version(folder)
        dest = self._domain_dir(domain) / version
        if not (dest / "manifest.json").is_file():
            tmp = dest.with_name(f"{version}.tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            for p in Path(folder).iterdir():
                if p.is_file() and p.name in (*PEFT_FILES, "loss_curve.png"):  # what PEFT reads, and the curve
                    shutil.copy2(p, tmp / p.name)
            full = {**manifest, "domain": domain, "version": version, "base_model": self.base,
                    "files": {n: hashlib.sha256((tmp / n).read_bytes()).hexdigest() for n in PEFT_FILES},
                    "size_bytes": sum((tmp / n).stat().st_size for n in PEFT_FILES),
                    "serving": serving(cfg).to_dict(),
                    "created_at": manifest.get("created_at", time.time())}
            write_text(tmp / "manifest.json", json.dumps(full, indent=1, sort_keys=True))
            replace_dir(tmp, dest)
        return AdapterRef(domain, version, dest)

    def import_folder(self, folder: Path, domain: str, *, activate: bool = False,
                      other_base: bool = False) -> AdapterRef:
        """Register a PEFT folder trained elsewhere (or a loradex export, whose training record is kept) and
        optionally activate it. Raises AdapterError when it is refused (`other_base`: see `validate`) or its
        manifest is unreadable."""
        folder = Path(folder)
        kept: dict = {}
        if (folder / "manifest.json").is_file():
            try:
                loaded = json.loads((folder / "manifest.json").read_text())
            except (OSError, ValueError) as e:
                raise AdapterError(f"{folder / 'manifest.json'}: unreadable ({e})") from None
            kept = {k: v for k, v in loaded.items() if k in _KEPT_ON_IMPORT}
        ref = self.register(folder, domain, {**kept, "imported_from": str(folder.resolve())}, other_base)
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
        """The version's manifest.json: hashes, base model, hyperparameters, metrics. Raises AdapterError when
        it is missing or unreadable (the version cannot be trusted: `check`)."""
        try:
            return json.loads((ref.path / "manifest.json").read_text())
        except (OSError, ValueError) as e:
            raise AdapterError(f"{ref.label}: its manifest.json is missing or unreadable ({e.__class__.__name__}); "
                               "the version cannot be checked: remove its folder "
                               f"({ref.path}) and import the adapter again") from None

    def check(self, ref: AdapterRef) -> dict:
        """Everything `validate` refuses, plus what only a registered version must hold: a readable manifest
        that names the folder's version, so `validate`'s check of the files against the manifest's hash is
        a check against the version itself (deleting or editing the manifest cannot switch it off). Returns
        the PEFT config; raises AdapterError."""
        if self.manifest(ref).get("version") != ref.version:
            raise AdapterError(f"{ref.label}: its manifest names another version (changed or corrupted); remove "
                               f"{ref.path} and import the adapter again")
        return validate(ref.path, self.base, self.base_shapes, base_dir=self.base_dir)

    def activate(self, domain: str, version: str) -> AdapterRef:
        """Validate a version and make it the domain's active one (the previous one goes on the rollback
        history). Raises AdapterError when it is unknown, ambiguous or fails validation."""
        ref = self.resolve(domain, version)
        self.check(ref)
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
        created_at, metrics, mixed_batch (False: generated in batches of its own), invalid (None, or why the
        version cannot be served: a missing or unreadable manifest)."""
        rows = []
        for d in sorted(p for p in self.root.iterdir() if p.is_dir()) if self.root.is_dir() else []:
            active = self._pointer(d.name)["version"]
            for v in sorted((p for p in d.iterdir() if p.is_dir() and not p.name.endswith(".tmp")),
                            key=lambda p: p.stat().st_mtime):
                row = {"domain": d.name, "version": v.name, "label": label(d.name, v.name),
                       "active": v.name == active, "invalid": None}
                try:
                    m = self.manifest(AdapterRef(d.name, v.name, v))
                    row.update(size_bytes=m.get("size_bytes"), created_at=m.get("created_at"),
                               metrics=m.get("metrics", {}), mixed_batch=_serving(v, m)["mixed_batch"])
                except (AdapterError, OSError, ValueError) as e:  # listed, never served: `check` refuses it
                    row.update(size_bytes=None, created_at=None, metrics={}, mixed_batch=False,
                               invalid=str(e) if isinstance(e, AdapterError) else f"unreadable ({e})")
                rows.append(row)
        return rows


def _serving(folder: Path, manifest: dict) -> dict:
    """The manifest's `serving` record, or (for versions registered before it was kept) the one their config gives."""
    if "serving" in manifest:
        return manifest["serving"]
    return serving(json.loads((folder / "adapter_config.json").read_text())).to_dict()
