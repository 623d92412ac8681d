"""Shepherd: Math-Shepherd (Wang et al., 2023, arXiv 2312.08935) from scratch.

    python shepherd.py label    automatic process annotation by Monte-Carlo completions (§3.3)
    python shepherd.py train    the one training loop: --objective sft | prm | orm
    python shepherd.py verify   best-of-N reranking, self-consistency, PRM-weighted voting

This file holds what the three commands share (files, seeds, distributed, the command-line
idiom) and the command line; each command is a file read top to bottom: label.py, train.py,
verify.py. Generation lives in sampler.py, grading and the label-file formats in data/, the
transformer and the PRM head in model.py.
"""
from __future__ import annotations

import argparse
import errno
import hashlib
import inspect
import math
import os
import re
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch

import data
from data.formats import InputError
from model import PRMHead, Tokenizer, Transformer

# ------------------------------------------------------------------------------------------------
# Utilities: files written whole or not at all, seeds derived from ids, torch.distributed


def atomic_write(path: str | Path, data: bytes | str):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_bytes(data.encode() if isinstance(data, str) else data)
        os.replace(tmp, path)
    except OSError as e:
        raise OSError(e.errno, e.strerror, str(path)) from None  # the bare error names no file
    finally:
        tmp.unlink(missing_ok=True)  # a full disk leaves no .tmp file behind


def first_new_folder(path: str | Path) -> Path | None:
    """The outermost folder of `path` (itself included) that does not exist yet: what a run that
    fails before it has saved anything removes, to leave the disk as it found it."""
    path = Path(path)
    return next((p for p in (*reversed(path.parents), path) if not p.exists()), None)


def load_model(path, what: str, dtype=torch.float32, device="cpu",
               check_only=False) -> tuple[Transformer, Tokenizer]:
    """A checkpoint and its tokenizer, checked before use: anything a user can get wrong (no such
    folder, no config or tokenizer, a truncated or misshaped shard, a tokenizer larger than the
    embedding) is an InputError. check_only: all the checks, no weights read (meta device)."""
    from safetensors import SafetensorError
    from model import resolve_checkpoint
    try:
        folder = resolve_checkpoint(path)
    except Exception as e:  # no such folder; or the hub: offline, no such repo, no access
        msg = str(e).splitlines()[0] if str(e) else ""
        raise InputError(
            f"{what}: {msg}" if msg.startswith(str(path)) else
            f"{what}: {path}: not a checkpoint folder, and the hub did not provide it "
            f"({type(e).__name__}: {msg})") from None
    for name in ("config.json", "tokenizer.json"):
        if not (folder / name).is_file():
            raise InputError(f"{folder}: no {name} ({what} needs a Hugging Face checkpoint folder "
                             f"with config.json, tokenizer.json and safetensors weights)")
    try:
        model = Transformer.from_pretrained(folder, dtype=dtype, device=device,
                                            check_only=check_only)
    except SafetensorError as e:
        raise InputError(f"{folder}: unreadable safetensors weights ({e})") from None
    except (ValueError, OSError) as e:  # CheckpointError, a bad config.json, an unreadable file
        raise InputError(str(e).replace("\n", " ")) from None
    try:
        tok = Tokenizer(folder)
    except Exception as e:  # the tokenizers library's parse errors have no class of their own
        raise InputError(f"{folder / 'tokenizer.json'}: not a tokenizer the tokenizers library "
                         f"reads ({e})") from None
    if tok.vocab_size > model.config.vocab_size:
        raise InputError(f"{folder / 'tokenizer.json'}: {tok.vocab_size} tokens do not fit the "
                         f"model's embedding ({model.config.vocab_size} rows): a tokenizer from "
                         f"another model?")
    return model, tok


def task_problems(task, name: str, split: str) -> list[data.Problem]:
    """task.load(split), an unknown split or missing data being the user's to fix."""
    if split not in task.SPLITS:
        raise InputError(f"--split {split}: task {name!r} has splits {', '.join(task.SPLITS)}")
    try:
        return task.load(split)
    except (OSError, ValueError) as e:
        raise InputError(str(e)) from None


def check_settings(path, saved: dict | None, now: dict, flag=lambda k: "--" + k.replace("_", "-")):
    """Resume `path` only with the settings that made it; each change is named, old -> new."""
    changed = ["the settings are not recorded"] if saved is None else \
        [f"{flag(k)} {saved.get(k)!r} -> {v!r}" for k, v in now.items() if saved.get(k) != v]
    if changed:
        raise InputError(f"{path}: made with other settings ({'; '.join(changed)}); rerun with the "
                         f"same ones to resume, or pass --restart (or a new --out) to start over")


def load_trainer_state(path: Path, keys: tuple, mmap: bool = False) -> dict:
    """A resume's trainer_state.pt, tensors and plain types only (weights_only: never unpickled);
    a truncated or foreign file is the user's to remove, not a traceback."""
    try:
        st = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception:  # a zip, pickle or format error: torch gives them no common class
        st = None
    if not isinstance(st, dict) or not all(k in st for k in keys):
        raise InputError(f"{path}: not a trainer state this tool wrote (expected "
                         f"{', '.join(keys)}); pass --restart (or a new --out) to start over")
    return st


def same_tokenizer(a: Tokenizer, b: Tokenizer, what: str):
    """Two models that read each other's tokens (generator and completer, policy and reward)."""
    if a.tok.get_vocab() != b.tok.get_vocab() or (a.prefix, a.suffix) != (b.prefix, b.suffix):
        raise InputError(f"{b.folder}: {what}'s tokenizer differs from {a.folder}'s; "
                         f"both must read the same tokens")


def device_arg(text: str) -> str:
    """--device: cpu, cuda or cuda:N, and a CUDA device only where torch has one."""
    if not re.fullmatch(r"cpu|cuda(:\d+)?", text):
        raise argparse.ArgumentTypeError(f"expected cpu, cuda or cuda:N, not {text!r}")
    if text.startswith("cuda") and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(
            f"{text}: this torch build has no CUDA device (torch {torch.__version__})")
    return text


def in_range(kind, lo, hi=math.inf, lo_open=False):
    """An argparse type: finite kind(text) in [lo, hi] ((lo, hi] if lo_open), else a usage error."""
    def parse(text):
        x = kind(text)
        if not (math.isfinite(x) and (x > lo if lo_open else x >= lo) and x <= hi):
            raise argparse.ArgumentTypeError(
                ("expected a finite number" if lo == -math.inf else
                 f"expected {'>' if lo_open else '>='} {lo}"
                 + (f" and <= {hi}" if hi < math.inf else "")) + f", not {text}")
        return x
    parse.__name__ = kind.__name__  # argparse names the type in its message
    return parse


POSITIVE, COUNT, RATE = in_range(int, 1), in_range(int, 0), in_range(float, 0, lo_open=True)
FRACTION, NONNEG, FINITE = in_range(float, 0, 1), in_range(float, 0), in_range(float, -math.inf)
SEED = in_range(int, 0, 2**32 - 1)  # what numpy takes, and room for torch's 64 bits after mixing


def flag(default=None, help: str = "", **argparse_settings):
    """A config field that is also a command-line flag (add_flags): --name, its default and help."""
    return field(default=default, metadata={"help": help, **argparse_settings})


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """--help: descriptions as written, every flag's default shown."""


class Parser(argparse.ArgumentParser):
    """Every command's parser: a usage error is one `error:` line and exit 2, as any bad input."""

    def error(self, message):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def add_flags(parser: argparse.ArgumentParser, config: type):
    """The one way a command line is made (shepherd.py's commands, ppo.py): a flag per field of a
    config dataclass, typed by its default unless the field says otherwise; bools are switches."""
    for f in fields(config):
        kw = dict(f.metadata)
        if isinstance(f.default, bool):
            kw["action"] = argparse.BooleanOptionalAction  # --x and --no-x
        elif type(f.default) in (int, float):
            kw.setdefault("type", type(f.default))
        parser.add_argument("--" + f.name.replace("_", "-"), default=f.default, **kw)


@dataclass
class Common:  # every command's flags
    tag: str = flag(data.STEP_TAG, "step tag, as written after a space; one token or several "
                    "(then read at its last token)")
    seed: int = flag(0, "every seed derives from this (and a record's id)", type=SEED)
    device: str | None = flag(None, "cpu, cuda or cuda:N (None: cuda if available)",
                              type=device_arg)


@dataclass
class Signs:  # the PRM's two label tokens (train, verify)
    good: str = flag("+", "token meaning 'this step can still reach the answer' (' +' if one "
                     "token, else '+')")
    bad: str = flag("-", "token meaning 'it cannot' (' -' if one token, else '-')")


def seed_for(*parts) -> int:
    """A 63-bit seed from ids, not the run: a record's randomness never depends on what else ran."""
    h = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return int.from_bytes(h[:8], "little") >> 1


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    device: str = "cpu"

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str | None = None) -> Dist:
    """torchrun (WORLD_SIZE > 1): a process group, gloo on CPU, NCCL on GPU; else one process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if world == 1:
        return Dist(device=device)
    import torch.distributed as dist
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.startswith("cuda"):
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return Dist(rank, world, device)


def barrier(d: Dist):
    if d.world > 1:
        torch.distributed.barrier()


def progress(iterable=None, d: Dist | None = None, **kw):
    from tqdm import tqdm
    return tqdm(iterable, disable=(d is not None and not d.main) or kw.pop("quiet", False),
                dynamic_ncols=True, **kw)


def prm_head(tok: Tokenizer, tag: str, good: str = "+", bad: str = "-") -> PRMHead:
    """The PRM's tag and +/- tokens in this tokenizer; ones it cannot give are bad input."""
    try:
        return PRMHead.from_tokenizer(tok, tag, good, bad)
    except ValueError as e:
        raise InputError(f"{tok.folder / 'tokenizer.json'}: --tag/--good/--bad: {e}") from None


def auc(scores: list[float], labels: list[float]) -> float:
    """ROC AUC (labels thresholded at 0.5): P(score of a positive > score of a negative)."""
    pos = [s for s, y in zip(scores, labels) if y >= 0.5]
    neg = [s for s, y in zip(scores, labels) if y < 0.5]
    if not pos or not neg or any(math.isnan(s) for s in scores):
        return float("nan")
    ranked = sorted([(s, 1) for s in pos] + [(s, 0) for s in neg])
    rank_sum, i = 0.0, 0
    while i < len(ranked):  # average ranks over ties
        j = i + 1
        while j < len(ranked) and ranked[j][0] == ranked[i][0]:
            j += 1
        rank_sum += sum(1 for k in range(i, j) if ranked[k][1]) * (i + j + 1) / 2
        i = j
    return (rank_sum - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg))


def file_digest(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


# ------------------------------------------------------------------------------------------------
# The command line


def commands() -> dict:
    """Each command's config and function (imported here: their modules import this one)."""
    from label import LabelConfig, cmd_label
    from train import TrainConfig, cmd_train
    from verify import VerifyConfig, cmd_verify
    return {"train": (TrainConfig, cmd_train), "label": (LabelConfig, cmd_label),
            "verify": (VerifyConfig, cmd_verify)}


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="shepherd.py", description=__doc__,
               formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    for name, (config, _) in commands().items():
        add_flags(sub.add_parser(name, help=config.__doc__.splitlines()[0],
                                 description=inspect.cleandoc(config.__doc__),
                                 formatter_class=HelpFormatter), config)
    return p


DISK_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM,
               errno.ENOTDIR, errno.EISDIR, errno.EEXIST}  # EEXIST: a file where a folder goes


def run_cli(command, argv, on_interrupt: str) -> int:
    """Every command's one error path: a user's mistake is one line and exit 2, Ctrl-C one line
    and exit 130; anything else is a bug in Shepherd and keeps its traceback."""
    try:
        return command(argv)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"interrupted; {on_interrupt}", file=sys.stderr)
        return 130
    except OSError as e:  # the disk is full, read-only or not ours: the user's to fix, not a bug
        if e.errno not in DISK_ERRORS:
            raise
        full = e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS)
        # the others can come from a read too (an unreadable input file): no verb guessed
        why = ("exists and is not a folder; expected one (or a new path)" if e.errno == errno.EEXIST
               else f"cannot write ({e.strerror})" if full else e.strerror)
        print(f"error: {e.filename}: {why}", file=sys.stderr)
        return 2


def main(argv=None) -> int:
    def command(argv):
        ns = build_parser().parse_args(argv)
        config, cmd = commands()[ns.command]
        return cmd(config(**{f.name: getattr(ns, f.name) for f in fields(config)}))
    return run_cli(command, argv, "label and train resume where they stopped when run again")


if __name__ == "__main__":
    sys.exit(main())
