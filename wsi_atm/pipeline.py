"""One slide through the whole pipeline: the function ``classify`` and ``batch`` share.

slide + detections → candidates → crops (streamed, prefetched) → P(atypical) → SlideResult →
hotspot, tissue, review flags, review picture → GeoJSON / CSV / summary JSON / PNG
(/ points JSON), each written atomically from the result alone.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import closing
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from wsi_atm import __version__
from wsi_atm.crops import CropPlan, plan_crops, read_crop, stream_crops
from wsi_atm.detections import CandidateOptions, Candidates, SlideFrame, read_detections
from wsi_atm.detections.records import CandidateStatus
from wsi_atm.files import sha256_file
from wsi_atm.findings import add_findings
from wsi_atm.fraction.estimators import card_rates
from wsi_atm.models.card import ModelCard
from wsi_atm.options import CallOptions, OpenOptions, OutputOptions
from wsi_atm.outputs.paths import retire_outputs
from wsi_atm.outputs.write import write_outputs
from wsi_atm.progress import progress_bar
from wsi_atm.slide_result import ModelMeta, SlideMeta, SlideResult
from wsi_atm.slides import Slide, open_slide
from wsi_atm.slides.mpp import override_warning

logger = logging.getLogger("wsi_atm.slides")

if TYPE_CHECKING:
    from wsi_atm.classifiers import SlideClassifier

THUMBNAIL_PX = 1600  # longest side of the thumbnail behind tissue area and the review picture


def _defined(value: float | None) -> float | None:
    """None for a missing or NaN (undefined: a fold without one class) number."""
    return None if value is None or value != value else float(value)


def model_meta(classifier: SlideClassifier, threshold: float | None) -> ModelMeta:
    card = classifier.card
    used = card.threshold if threshold is None else threshold
    # The card's cross-validated sensitivity/specificity hold only at its own threshold without
    # TTA; at any other operating point the error correction would use the wrong rates.
    rates = card_rates(card.metrics, card.threshold) if not classifier.tta else {}
    m = card.metrics if used == card.threshold and not classifier.tta else {}
    return ModelMeta(
        name=card.name, card_path=str(card.path), weights_sha256=classifier.weight_sha256,
        threshold=used, sensitivity=_defined(m.get("sensitivity")),
        specificity=_defined(m.get("specificity")),
        n_atypical=m.get("cv_n_atypical") or None, n_normal=m.get("cv_n_normal") or None,
        sensitivity_sd=_defined(m.get("cv_sensitivity_std")),
        specificity_sd=_defined(m.get("cv_specificity_std")),
        tta=classifier.tta,
        engine=classifier.engine, precision=classifier.precision,
        # Platt calibration was fitted on plain (no-TTA) probabilities; it does not depend on
        # the threshold, so it survives --threshold but not --tta.
        fraction={} if classifier.tta else dict(card.fraction), card_rates=rates,
    )


def slide_meta(slide: Slide, plan: CropPlan) -> SlideMeta:
    return SlideMeta(
        # absolute: as typed it meant something only from where the command was run
        path=str(Path(slide.path).absolute()), name=Path(slide.path).name, backend=slide.backend,
        width=slide.dimensions[0], height=slide.dimensions[1], mpp=slide.mpp,
        mpp_x=slide.mpp_xy.x, mpp_y=slide.mpp_xy.y, mpp_source=slide.mpp_source,
        bounds_offset=slide.bounds_offset,
        pixel_reader="tiles" if plan.level in slide.tile_levels else slide.backend,
        crop_level=plan.level, resample_factor=plan.largest_scale, upsampled=plan.upsampled,
        detections_mpp=slide.detections_mpp_xy.value,
        detections_mpp_xy=(slide.detections_mpp_xy.x, slide.detections_mpp_xy.y),
    )


@dataclass
class Calls:
    """The classifier's output for one slide's candidates (outside ones keep their status)."""

    p: np.ndarray  # P(atypical), NaN where not classified
    fold_std: np.ndarray  # std of p over the fold models, NaN where not classified
    status: np.ndarray
    at_border: np.ndarray
    timings: dict[str, float]


def classify_candidates(
    slide: Slide, cands: Candidates, plan: CropPlan, classifier: SlideClassifier, quiet: bool,
) -> Calls:
    """P(atypical), its spread over fold models, status and at_border per candidate."""
    from wsi_atm.prefetch import prefetch

    n = len(cands)
    p, spread = np.full(n, np.nan), np.full(n, np.nan)
    status = cands.status.astype(object).copy()
    at_border = np.zeros(n, dtype=bool)
    inside = np.flatnonzero(cands.inside())
    bar = progress_bar(len(inside), "classifying", quiet=quiet, unit="crop")
    batches = stream_crops(slide, cands.x[inside], cands.y[inside], plan=plan,
                           batch_size=classifier.batch_size)
    t_wait = t_infer = 0.0
    t = time.perf_counter()
    # closing(): on any exception (CUDA error, Ctrl-C) the reader threads are joined here,
    # before the caller closes the slide they read from.
    # the bar closed first on an error too: the error's line must not land on the bar's
    with closing(bar), closing(batches), closing(prefetch(batches)) as stream:
        for batch in stream:
            t_wait += time.perf_counter() - t
            t = time.perf_counter()
            idx = inside[batch.indices]
            folds = classifier.predict_folds(batch.images)
            p[idx], spread[idx] = folds.mean(axis=0), folds.std(axis=0)
            at_border[idx] = batch.at_border
            status[idx] = CandidateStatus.CLASSIFIED.value
            t_infer += time.perf_counter() - t
            bar.update(len(idx))
            t = time.perf_counter()
    timings = {"crop_wait_s": round(t_wait, 3), "inference_s": round(t_infer, 3)}
    return Calls(p, spread, status, at_border, timings)


@dataclass
class PreparedSlide:
    """An open slide with its candidates and crop plan, ready to classify."""

    slide: Slide
    detections_path: Path
    candidates: Candidates
    plan: CropPlan
    timings: dict[str, float]
    started: float
    prepare_s: float = 0.0  # opening, detections and planning

    def close(self) -> None:
        self.slide.close()

    def start_now(self) -> None:
        """Count the slide's time from now on, plus its own preparation: a batch prepares the
        next slide in the background while another is classified, and that wait is not this
        slide's time (it made a small slide after a large one report the large one's)."""
        self.started = time.perf_counter() - self.prepare_s


def prepare_slide(
    slide_path: str | Path, detections_path: str | Path, card: ModelCard,
    cand_options: CandidateOptions, opening: OpenOptions | None = None,
) -> PreparedSlide:
    """Open the slide, read its detections and plan its crops (closing the slide on error)."""
    opening = opening or OpenOptions()
    t0 = time.perf_counter()
    slide = open_slide(slide_path, backend=opening.backend, mpp=opening.mpp,
                       mpp_origin=opening.mpp_origin)
    try:
        timings = {"open_s": round(time.perf_counter() - t0, 3)}
        overridden = override_warning(slide.declared_mpp, slide.mpp, slide.mpp_source)
        if overridden:
            logger.warning("%s: %s", Path(slide.path).name, overridden)
        detector = slide.detections_mpp_xy
        frame = SlideFrame(name=Path(slide.path).name, width=slide.dimensions[0],
                           height=slide.dimensions[1], mpp=slide.mpp,
                           bounds_offset=slide.bounds_offset,
                           units_mpp=(detector.x, detector.y))
        t = time.perf_counter()
        cands = read_detections(detections_path, frame, cand_options)
        timings["detections_s"] = round(time.perf_counter() - t, 3)
        plan = plan_crops(slide, size=card.crop_size, target_mpp=card.mpp)
    except BaseException:
        slide.close()
        raise
    return PreparedSlide(slide, Path(detections_path), cands, plan, timings, t0,
                         time.perf_counter() - t0)


def classify_prepared(
    prep: PreparedSlide, classifier: SlideClassifier, cand_options: CandidateOptions,
    calls: CallOptions, figure: bool = True, quiet: bool = True,
) -> SlideResult:
    """Everything the outputs need, while the slide is open: calls with their provenance, the
    hotspot, tissue area, review flags and (with ``figure``) the review picture."""
    out = classify_candidates(prep.slide, prep.candidates, prep.plan, classifier, quiet)
    timings = {**prep.timings, **out.timings}
    result = SlideResult(
        slide=slide_meta(prep.slide, prep.plan), model=model_meta(classifier, calls.threshold),
        candidates=prep.candidates, p_atypical=out.p, status=out.status,
        at_border=out.at_border, detections_path=str(prep.detections_path.absolute()),
        detections_sha256=sha256_file(prep.detections_path),
        candidate_options=asdict(cand_options), timings=timings,
        package_version=__version__, fold_std=out.fold_std,
    )
    t = time.perf_counter()
    thumbnail = prep.slide.get_thumbnail(THUMBNAIL_PX)
    timings["thumbnail_s"] = round(time.perf_counter() - t, 3)
    t = time.perf_counter()
    add_findings(result, calls, folds=classifier.n_models, thumbnail=thumbnail)
    timings["findings_s"] = round(time.perf_counter() - t, 3)  # hotspot, tissue area
    if figure:
        t = time.perf_counter()
        result.review_png = render_review_png(prep, result, thumbnail)
        timings["review_png_s"] = round(time.perf_counter() - t, 3)
    result.elapsed_s = round(time.perf_counter() - prep.started, 3)
    return result


def render_review_png(prep: PreparedSlide, result: SlideResult, thumbnail: np.ndarray) -> bytes:
    """The review picture: the thumbnail with calls and hotspot, and the gallery's crops."""
    from wsi_atm.outputs.figures import pick_gallery, review_png

    scale = thumbnail.shape[1] / prep.slide.dimensions[0]
    confident, flagged = pick_gallery(result)
    gallery = []
    for i in [*confident, *flagged]:
        x, y = float(result.candidates.x[i]), float(result.candidates.y[i])
        crop, _ = read_crop(prep.slide, x, y, prep.plan)
        gallery.append((crop, float(result.p_atypical[i]), str(result.candidates.ids[i])))
    n_flagged = int(np.count_nonzero(result.review))
    sections = [("Most confident atypical", len(confident)),
                (f"Flagged for review ({len(flagged)} of {n_flagged}, nearest the threshold)",
                 len(flagged))]
    return review_png(thumbnail, scale, result, gallery, sections=sections)


def run_slide(
    slide_path: str | Path, detections_path: str | Path, classifier: SlideClassifier,
    cand_options: CandidateOptions, opening: OpenOptions | None = None,
    calls: CallOptions | None = None, outputs: OutputOptions | None = None,
    out_dir: Path | None = None, quiet: bool = True,
) -> SlideResult:
    """Classify every candidate of one slide; with ``out_dir``, write all outputs there."""
    prep = prepare_slide(slide_path, detections_path, classifier.card, cand_options, opening)
    return run_prepared(prep, lambda: classifier, cand_options, calls, outputs, out_dir, quiet)


def run_prepared(
    prep: PreparedSlide, make_classifier: Callable[[], SlideClassifier],
    cand_options: CandidateOptions, calls: CallOptions | None = None,
    outputs: OutputOptions | None = None, out_dir: Path | None = None, quiet: bool = True,
) -> SlideResult:
    """:func:`run_slide` from a prepared slide, which it closes. The classifier is made only
    now, so bad input (slide, detections) fails before the network is loaded."""
    calls, outputs = calls or CallOptions(), outputs or OutputOptions()
    try:
        t = time.perf_counter()
        classifier = make_classifier()
        prep.timings["model_load_s"] = round(time.perf_counter() - t, 3)
        if out_dir is not None:  # inputs and model are good: the work starts here
            retire_outputs(Path(prep.slide.path).name, out_dir)
        result = classify_prepared(prep, classifier, cand_options, calls,
                                   figure=outputs.figure and out_dir is not None, quiet=quiet)
    finally:
        prep.close()
    if out_dir is not None:
        write_outputs(result, out_dir, outputs)
    return result  # elapsed_s as the summary states it (open to classified, before writing)
