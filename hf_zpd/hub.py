"""The curriculum record on the Hugging Face Hub: push it to a dataset repo with its card, and load it back.

Every failure at the Hub boundary becomes one clear error: `PermissionError` when the Hub refuses a write,
`ConnectionError` when it cannot be reached (or offline mode is on), `FileNotFoundError` when a repo has no record.
Each message names the endpoint and, for a push, the local copy that was kept.
"""

from __future__ import annotations

import os

from ._io import package_version
from .record import RECORD_NAME, CurriculumRecord

DATA_MAP_NAME = "data_map.png"


def push_curriculum(
    record: CurriculumRecord,
    repo_id: str,
    token: str | None = None,
    private: bool | None = None,
    revision: str | None = None,
    commit_message: str = "Upload ZPD curriculum",
    license: str | None = None,
    model_repo_id: str | None = None,
    local_path: str | None = None,
):
    """Creates (if needed) the dataset repo `repo_id` and commits the record and its dataset card to it.

    Args:
        record ([`~hf_zpd.record.CurriculumRecord`]): the curriculum.
        repo_id (`str`): the dataset repo, `namespace/name` or `name` (the token's namespace).
        token (`str`, *optional*): a write token; the logged-in one by default.
        private (`bool`, *optional*): make a new repo private.
        revision (`str`, *optional*): the branch to commit to (default `main`).
        commit_message (`str`, *optional*): the commit's title.
        license (`str`, *optional*), model_repo_id (`str`, *optional*): written into the card ([`cards.dataset_card`]).
        local_path (`str`, *optional*): a local copy of the record to upload, named in error messages.

    Returns:
        `huggingface_hub.CommitInfo`

    Raises:
        `PermissionError`: the Hub refused the write (no token, or a read-only one).
        `ConnectionError`: the Hub could not be reached, or offline mode is on, or another Hub error.
    """
    from huggingface_hub import CommitOperationAdd, HfApi

    from .cards import data_map_png, dataset_card

    api = HfApi(library_name="hf_zpd", library_version=package_version())
    try:
        repo_url = api.create_repo(repo_id, repo_type="dataset", token=token, private=private, exist_ok=True)
        repo_id = repo_url.repo_id
        card = dataset_card(record, repo_id, license=license, model_repo_id=model_repo_id)
        payload = local_path if local_path is not None else record.to_parquet_bytes()
        operations = [
            CommitOperationAdd(path_in_repo=RECORD_NAME, path_or_fileobj=payload),
            CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=str(card).encode()),
        ]
        picture = data_map_png(record)
        if picture is not None:  # the card links it
            operations.append(CommitOperationAdd(path_in_repo=DATA_MAP_NAME, path_or_fileobj=picture))
        return api.create_commit(
            repo_id, operations, commit_message=commit_message, repo_type="dataset", token=token, revision=revision
        )
    except Exception as error:  # every failure at the Hub boundary gets one clear message
        raise hub_error(f"push the curriculum to the dataset repo {repo_id!r}", error, local_path) from error


def hub_error(action: str, error: Exception, local_path: str | None = None) -> OSError:
    """A clear `PermissionError` or `ConnectionError` for a failed Hub call, naming the endpoint and the local copy."""
    from huggingface_hub import constants
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    keep = (
        f" The curriculum is saved locally at {local_path}; push it again with trainer.push_curriculum_to_hub() or "
        f"hf_zpd.push_curriculum(hf_zpd.load_curriculum({local_path!r}), repo_id)."
        if local_path
        else ""
    )
    endpoint = constants.ENDPOINT
    status = getattr(getattr(error, "response", None), "status_code", None)
    if isinstance(error, HfHubHTTPError) and status in (401, 403):
        return PermissionError(
            f"Could not {action}: the Hub at {endpoint} refused the write ({status}). Pass a token with write access "
            f"(token=..., TrainingArguments.hub_token, the HF_TOKEN variable, or `hf auth login`).{keep}"
        )
    if isinstance(error, OfflineModeIsEnabled):
        return ConnectionError(f"Could not {action}: offline mode is on (HF_HUB_OFFLINE=1).{keep}")
    reason = str(error).splitlines()[0] if str(error) else type(error).__name__
    return ConnectionError(f"Could not {action} at {endpoint} ({type(error).__name__}: {reason}).{keep}")


def load_curriculum(
    path_or_repo_id: str | os.PathLike,
    revision: str | None = None,
    token: str | None = None,
    cache_dir: str | None = None,
) -> CurriculumRecord:
    """Loads a curriculum record from a local folder or file, or from a Hub dataset repo.

    Args:
        path_or_repo_id (`str` or `os.PathLike`):
            A `.parquet` record file, a folder holding `zpd_curriculum.parquet` (a run's output_dir, a checkpoint
            folder, a downloaded repo), or the id of a Hub dataset repo pushed with
            [`ZPDTrainer.push_curriculum_to_hub`]. An existing local path always wins.
        revision (`str`, *optional*), token (`str`, *optional*), cache_dir (`str`, *optional*):
            Passed to `huggingface_hub.hf_hub_download` for a repo id.

    Returns:
        [`~hf_zpd.record.CurriculumRecord`]

    Raises:
        `FileNotFoundError`: no record at the local path, or none in the repo.
        `ConnectionError`: the Hub could not be reached (or offline mode is on).
        `ValueError`: the file is damaged or of an unknown format version.
    """
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    target = os.fspath(path_or_repo_id)
    if os.path.isdir(target):
        path = os.path.join(target, RECORD_NAME)
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"{target} holds no curriculum record ({RECORD_NAME}). A run writes it into its output_dir at the "
                "end of training and into each checkpoint; trainer.save_curriculum(path) writes one on demand."
            )
        return CurriculumRecord.load(path)
    if os.path.isfile(target):
        return CurriculumRecord.load(target)
    try:
        if target.endswith(".parquet"):  # a file name that does not exist, not a repo
            raise HFValidationError(target)
        validate_repo_id(target)
    except HFValidationError:
        raise FileNotFoundError(
            f"No curriculum record at {target}: no such file or folder (nor a Hub repo id)."
        ) from None
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        path = hf_hub_download(
            target, RECORD_NAME, repo_type="dataset", revision=revision, token=token, cache_dir=cache_dir
        )
    except LocalEntryNotFoundError as error:
        # Raised when the Hub could not be asked (unreachable, offline) and the cache has no copy; the cause says why.
        raise hub_error(
            f"download the curriculum {target!r} (not a local path, and not in the cache)", error.__cause__ or error
        ) from error
    except (RepositoryNotFoundError, RevisionNotFoundError, EntryNotFoundError) as error:
        raise FileNotFoundError(
            f"{target} is not a local path, and the Hub dataset repo {target!r} has no {RECORD_NAME} "
            f"({type(error).__name__}). Check the repo id (a dataset repo, e.g. 'user/run-curriculum')."
        ) from error
    except Exception as error:  # unreachable, offline, or any other Hub failure
        raise hub_error(f"download the curriculum {target!r} (not a local path)", error) from error
    return CurriculumRecord.load(path)
