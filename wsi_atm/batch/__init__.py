"""``wsi-atm batch``: many slides, resumable, failure-isolated, locally or on dask.distributed.

**Plan.** Jobs (slide, detections, mpp) come from a manifest (``slide,detections[,mpp]``, paths
relative to the manifest's folder; every bad row is listed before any work) or from a folder:
slides are its files with a WSI extension (case-insensitive; or ``--pattern`` globs), and the
detections of ``NAME.<wsi extension>`` are the files ``NAME.*`` in the detections folder (default:
beside the slide) whose format is recognised from their content. One match pairs; none is
reported as ``no_detections`` (unrecognised ``NAME.*`` files are named in the error column);
several fail that slide, listing them. One multi-slide file (MIDOG++ JSON, SlideRunner) can
serve every slide; slides it has no entry for are ``no_detections``.

**Resume.** After all four outputs of a slide are written, ``OUT/.wsi-atm/<stem>.done.json``
records the slide (resolved path, size, mtime), the detections (path, sha256), the model (card
sha256, weight sha256s) and every option that changes an output (threshold, candidate options,
mpp, backend, shape, tta). A slide is skipped only when that record matches and the outputs are
all there; the record is removed before a slide's outputs are rewritten. Outputs are atomic, so
a run killed at any moment (even ``kill -9``) leaves no partial file and resumes where it stopped.

**Run.** Locally, the model is loaded once and the next slide is opened, its detections read
and its crops planned in a background thread while the current slide is classified. With dask,
each worker process keeps one Classifier resident across slides and sends the SlideResult back;
the client writes every output (reopening the slide for the review picture), so results are the
same as a single-process run. A failing slide is recorded with its error and the batch goes on.
"""

from wsi_atm.batch.plan import (
    SLIDE_EXTENSIONS,
    STATUSES,
    BatchSettings,
    Job,
    Outcome,
    find_slides,
    pair_detections,
    plan_jobs,
    read_manifest,
)
from wsi_atm.batch.resume import STATE_DIR, completion_key, record_path
from wsi_atm.batch.run import local_threads, run_batch

__all__ = [
    "SLIDE_EXTENSIONS",
    "STATE_DIR",
    "STATUSES",
    "BatchSettings",
    "Job",
    "Outcome",
    "completion_key",
    "find_slides",
    "local_threads",
    "pair_detections",
    "plan_jobs",
    "read_manifest",
    "record_path",
    "run_batch",
]
