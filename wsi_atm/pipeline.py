"""One slide through the whole pipeline: the function ``classify`` and ``batch`` share.

slide + detections → candidates → crops (streamed, prefetched) → P(atypical) → SlideResult →
GeoJSON / CSV / summary JSON / review PNG, each written atomically.
"""

from __future__ import annotations

import time
from contextlib import closing
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from wsi_atm import __version__
from wsi_atm.crops import CropPlan, plan_crops, read_crop, stream_crops
from wsi_atm.detections import CandidateOptions, Candidates, SlideFrame, read_detections
from wsi_atm.detections.records import CandidateStatus
from wsi_atm.faults import inject
from wsi_atm.files import sha256_file
from wsi_atm.infer import Classifier, prefetch
from wsi_atm.models.card import ModelCard
from wsi_atm.outputs.geojson import Shape
from wsi_atm.progress import progress_bar
from wsi_atm.slide_result import ModelMeta, SlideMeta, SlideResult
from wsi_atm.slides import Slide, open_slide


@dataclass(frozen=True)
class SlideOptions:
    """How to open the slide and present the result (not what the model is)."""

    backend: str = "auto"
    mpp: float | None = None
    threshold: float | None = None
    shape: Shape = "point"
    quiet: bool = False
    figure: bool = True


def model_meta(classifier: Classifier, threshold: float | None) -> ModelMeta:
    card = classifier.card
    used = card.threshold if threshold is None else threshold
    # The card's cross-validated sensitivity/specificity hold only at its own threshold without
    # TTA; at any other operating point the error correction would use the wrong rates.
    m = card.metrics if used == card.threshold and not classifier.tta else {}
    return ModelMeta(
        name=card.name, card_path=str(card.path), weights_sha256=classifier.weight_sha256,
        threshold=used, sensitivity=m.get("sensitivity"), specificity=m.get("specificity"),
        n_atypical=m.get("cv_n_atypical"), n_normal=m.get("cv_n_normal"), tta=classifier.tta,
        # Platt calibration was fitted on plain (no-TTA) probabilities; it does not depend on
        # the threshold, so it survives --threshold but not --tta.
        fraction={} if classifier.tta else dict(card.fraction),
    )


def slide_meta(slide: Slide, plan: CropPlan) -> SlideMeta:
    return SlideMeta(
        path=str(slide.path), name=Path(slide.path).name, backend=slide.backend,
        width=slide.dimensions[0], height=slide.dimensions[1], mpp=slide.mpp,
        mpp_x=slide.mpp_xy.x, mpp_y=slide.mpp_xy.y, mpp_source=slide.mpp_source,
        bounds_offset=slide.bounds_offset,
        crop_level=plan.level, resample_factor=plan.scale, upsampled=plan.upsampled,
        detections_mpp=slide.detections_mpp_xy.value,
    )


def classify_candidates(
    slide: Slide, cands: Candidates, plan: CropPlan, classifier: Classifier, quiet: bool,
    timings: dict[str, float],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """P(atypical), status and at_border per candidate; outside ones keep their status."""
    n = len(cands)
    p = np.full(n, np.nan)
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
    with closing(batches), closing(prefetch(batches)) as stream:
        for batch in stream:
            t_wait += time.perf_counter() - t
            t = time.perf_counter()
            idx = inside[batch.indices]
            p[idx] = classifier.predict(batch.images)
            at_border[idx] = batch.at_border
            status[idx] = CandidateStatus.CLASSIFIED.value
            t_infer += time.perf_counter() - t
            bar.update(len(idx))
            t = time.perf_counter()
    bar.close()
    timings["crop_wait_s"], timings["inference_s"] = round(t_wait, 3), round(t_infer, 3)
    return p, status, at_border


@dataclass
class PreparedSlide:
    """An open slide with its candidates and crop plan, ready to classify."""

    slide: Slide
    detections_path: Path
    candidates: Candidates
    plan: CropPlan
    timings: dict[str, float]
    started: float

    def close(self) -> None:
        self.slide.close()


def prepare_slide(
    slide_path: str | Path, detections_path: str | Path, card: ModelCard,
    cand_options: CandidateOptions, backend: str = "auto", mpp: float | None = None,
) -> PreparedSlide:
    """Open the slide, read its detections and plan its crops (closing the slide on error)."""
    t0 = time.perf_counter()
    slide = open_slide(slide_path, backend=backend, mpp=mpp)
    try:
        timings = {"open_s": round(time.perf_counter() - t0, 3)}
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
    return PreparedSlide(slide, Path(detections_path), cands, plan, timings, t0)


def classify_prepared(
    prep: PreparedSlide, classifier: Classifier, cand_options: CandidateOptions,
    threshold: float | None = None, quiet: bool = True,
) -> SlideResult:
    """P(atypical) of every candidate of a prepared slide, with its provenance."""
    p, status, at_border = classify_candidates(
        prep.slide, prep.candidates, prep.plan, classifier, quiet, prep.timings)
    result = SlideResult(
        slide=slide_meta(prep.slide, prep.plan), model=model_meta(classifier, threshold),
        candidates=prep.candidates, p_atypical=p, status=status, at_border=at_border,
        detections_path=str(prep.detections_path),
        detections_sha256=sha256_file(prep.detections_path),
        candidate_options=asdict(cand_options), timings=prep.timings,
        package_version=__version__,
    )
    result.elapsed_s = round(time.perf_counter() - prep.started, 3)
    return result


def run_slide(
    slide_path: str | Path, detections_path: str | Path, classifier: Classifier,
    cand_options: CandidateOptions, options: SlideOptions, out_dir: Path | None = None,
) -> SlideResult:
    """Classify every candidate of one slide; with ``out_dir``, write all outputs there."""
    prep = prepare_slide(slide_path, detections_path, classifier.card, cand_options,
                         backend=options.backend, mpp=options.mpp)
    try:
        result = classify_prepared(prep, classifier, cand_options, options.threshold,
                                   options.quiet)
        if out_dir is not None:
            write_outputs(prep.slide, prep.plan, result, out_dir, options)
    finally:
        prep.close()
    return result  # elapsed_s as the summary states it (open to classified, before writing)


def output_paths(slide_name: str, out_dir: Path) -> dict[str, Path]:
    stem = Path(slide_name).stem
    return {
        "geojson": out_dir / f"{stem}.geojson",
        "csv": out_dir / f"{stem}.csv",
        "summary": out_dir / f"{stem}.summary.json",
        "png": out_dir / f"{stem}.png",
    }


def write_outputs(
    slide: Slide, plan: CropPlan, result: SlideResult, out_dir: Path, options: SlideOptions
) -> dict[str, Path]:
    """Write the four outputs; the summary goes last so its presence means all are complete."""
    from wsi_atm.files import remove_temps
    from wsi_atm.outputs.figures import pick_gallery, write_review_png
    from wsi_atm.outputs.geojson import write_geojson
    from wsi_atm.outputs.summary import write_summary
    from wsi_atm.outputs.tables import write_candidates_csv

    t0 = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = output_paths(result.slide.name, out_dir)
    # One unit: no summary of an earlier run may vouch for files this run is replacing, and a
    # killed run's temp files go; the new summary is written last.
    paths["summary"].unlink(missing_ok=True)
    for path in paths.values():
        remove_temps(path)
    write_geojson(result, paths["geojson"], shape=options.shape)
    inject("write")
    write_candidates_csv(result, paths["csv"])
    if options.figure:
        thumb_max = 1600
        thumbnail = slide.get_thumbnail(thumb_max)
        scale = thumbnail.shape[1] / slide.dimensions[0]
        confident, uncertain = pick_gallery(result)
        gallery = []
        for i in [*confident, *uncertain]:
            x, y = float(result.candidates.x[i]), float(result.candidates.y[i])
            crop, _ = read_crop(slide, x, y, plan)
            gallery.append((crop, float(result.p_atypical[i]), str(result.candidates.ids[i])))
        sections = [("Most confident atypical", len(confident)),
                    ("Most uncertain (p near threshold)", len(uncertain))]
        write_review_png(paths["png"], thumbnail, scale, result, gallery, sections=sections)
    result.timings["write_s"] = round(time.perf_counter() - t0, 3)
    write_summary(result, paths["summary"])
    return paths
