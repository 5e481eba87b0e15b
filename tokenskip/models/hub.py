"""The hub side of downloads: file lists and sizes, snapshot and dataset fetches, retries of
transient failures, and one-line explanations of the rest (gated, offline, not found)."""

from __future__ import annotations

import argparse
import contextlib
import errno
import functools
import os
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

import httpx
from huggingface_hub import HfApi, constants, snapshot_download
from huggingface_hub.errors import (
    GatedRepoError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    XetDownloadError,
)
from huggingface_hub.utils import filter_repo_objects

from tokenskip.core.errors import UsageError, first_line
from tokenskip.core.jsonio import write_jsonl_atomic
from tokenskip.models.catalogue import DEFAULT_EXCLUDE, Fetch, RepoFiles
from tokenskip.models.store import is_complete, partial_dir

T = TypeVar("T")
BACKOFF_S = 1.0  # first retry delay; doubles on each further attempt
SIZE_TIMEOUT_S = 15.0
_NETWORK_ERRORS = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError,
                   ConnectionError, TimeoutError, XetDownloadError)


def _chain(exc: BaseException | None) -> Iterator[BaseException]:
    while exc is not None:
        yield exc
        exc = exc.__cause__ or exc.__context__


def _status(exc: BaseException) -> int | None:
    for cause in _chain(exc):
        response = getattr(cause, "response", None)
        if getattr(response, "status_code", None) is not None:
            return response.status_code
    return None


def _network_cause(exc: BaseException) -> BaseException | None:
    """The connection/timeout error behind `exc` (hub wrappers chain it as their cause), if any."""
    return next((cause for cause in _chain(exc) if isinstance(cause, _NETWORK_ERRORS)
                 and not isinstance(cause, OfflineModeIsEnabled)), None)


def is_transient(exc: BaseException) -> bool:
    """Worth retrying: the network or the hub hiccuped (connection, timeout, 429, 5xx), not our request."""
    status = _status(exc)
    if status is not None:
        return status == 429 or status >= 500
    return _network_cause(exc) is not None


def _brief(exc: BaseException) -> str:
    status = _status(exc)
    if status is not None:
        return f"HTTP {status}"
    cause = _network_cause(exc) or exc
    detail = first_line(cause)
    return detail if detail == type(cause).__name__ else f"{type(cause).__name__}: {detail}"


def with_retries(action: Callable[[], T], *, what: str, retries: int,
                 sleep: Callable[[float], None] = time.sleep) -> T:
    """Run `action`, retrying transient network errors with exponential backoff."""
    attempt = 0
    while True:
        try:
            return action()
        except Exception as exc:
            if attempt >= retries or not is_transient(exc):
                raise
            wait = BACKOFF_S * 2**attempt
            attempt += 1
            print(f"  {what}: {_brief(exc)}; retry {attempt}/{retries} in {wait:g} s", flush=True)
            sleep(wait)


OFFLINE_MODE = ("HF_HUB_OFFLINE=1 is set, so the Hugging Face hub is not contacted: unset it to download, "
                "or use `python download_models.py --embedded`, which works offline")


def explain(exc: Exception, item: Fetch) -> str | None:
    """A one-line, actionable message for a hub failure; None for a bug that deserves its traceback."""
    if any(isinstance(cause, OfflineModeIsEnabled) for cause in _chain(exc)):
        return OFFLINE_MODE
    status = _status(exc)
    # `datasets` wraps the hub's GatedRepoError in its own DatasetNotFoundError, hence the chain
    if any(isinstance(cause, GatedRepoError) for cause in _chain(exc)) or (item.gated and status in (401, 403)):
        page = f"datasets/{item.source}" if item.kind == "dataset" else item.source
        return (f"{item.source} is gated: accept its licence at https://huggingface.co/{page} while "
                "logged in, then set HF_TOKEN to a token of that account (https://huggingface.co/settings/tokens)")
    if isinstance(exc, RepositoryNotFoundError):
        return f"{item.source} was not found on {constants.ENDPOINT} (if it is private, set HF_TOKEN)"
    if status in (401, 403):
        return f"the hub refused access to {item.source} (HTTP {status}): check HF_TOKEN"
    if status is not None:
        later = "; try again later (the download resumes where it stopped)" if is_transient(exc) else ""
        return f"the hub at {constants.ENDPOINT} answered HTTP {status} for {item.source}{later}"
    if is_transient(exc):
        return (f"cannot reach the Hugging Face hub at {constants.ENDPOINT} ({_brief(exc)}): check the "
                "network (or HF_ENDPOINT for a mirror); `python download_models.py --embedded` works offline")
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return f"the disk filled up while fetching {item.source}: free some space and rerun (it resumes)"
    return None


def _hub_call(action: Callable[[], T], item: Fetch, retries: int) -> T:
    try:
        return with_retries(action, what=item.source, retries=retries)
    except Exception as exc:
        message = explain(exc, item)
        if message is None:
            raise
        raise UsageError(message) from None


def repo_files(repo: str) -> RepoFiles:
    """The repo's current commit and its files' sizes."""
    info = HfApi().model_info(repo, files_metadata=True, timeout=SIZE_TIMEOUT_S)
    return RepoFiles(info.sha, {s.rfilename: s.size or 0 for s in info.siblings or []})


def exclude_patterns(user: Sequence[str] | None, filenames: Sequence[str]) -> list[str]:
    """The user's patterns, else the defaults plus `*.bin` when the repo also has safetensors."""
    if user:
        return list(user)
    patterns = list(DEFAULT_EXCLUDE)
    if any(name.endswith(".safetensors") for name in filenames):
        patterns.append("*.bin")
    return patterns


def apply_file_list(item: Fetch, files: RepoFiles, include: Sequence[str] | None,
                    exclude: Sequence[str] | None) -> None:
    """Pin the item to the hub's commit and replace its size estimate by the real selected size."""
    item.revision = files.revision
    item.exclude = exclude_patterns(exclude, list(files.sizes))
    kept = filter_repo_objects(list(files.sizes), allow_patterns=include or None,
                               ignore_patterns=item.exclude)
    item.size = sum(files.sizes[name] for name in kept)


def fetch_model(item: Fetch, include: Sequence[str] | None, retries: int) -> None:
    partial = partial_dir(item)
    if item.target.exists() and not partial.exists():  # interrupted in place by another tool: resume it
        partial.parent.mkdir(parents=True, exist_ok=True)
        os.replace(item.target, partial)
    _hub_call(lambda: snapshot_download(item.source, revision=item.revision, local_dir=partial,
                                        allow_patterns=list(include) if include else None,
                                        ignore_patterns=item.exclude), item, retries)
    os.replace(partial, item.target)
    with contextlib.suppress(OSError):
        partial.parent.rmdir()  # only when no other partial download waits there


def fetch_dataset(item: Fetch, retries: int) -> None:
    from datasets import load_dataset

    rows = _hub_call(lambda: load_dataset(item.source, item.config, split=item.split), item, retries)
    write_jsonl_atomic(item.target, (dict(row) for row in rows))


def size_from_hub(items: list[Fetch], args: argparse.Namespace, *, retries: int) -> None:
    """Pin each model still to fetch to the hub's commit and real size (UsageError if the hub fails)."""
    for item in items:
        if item.kind == "model" and not is_complete(item):
            files = _hub_call(functools.partial(repo_files, item.source), item, retries)
            apply_file_list(item, files, args.include, args.exclude)
