"""``report.html``: the cohort as one self-contained page to click through.

One row per slide (status, counts, the atypical share with its interval, the hotspot, flagged
calls). The table sorts by any column: click its header, or open ``report.html#sort=KEY``
(``#sort=-KEY`` descending; KEY as in the header's ``data-key``, e.g. ``hotspot-mitoses``).
Clicking a row opens that slide's review picture (thumbnail with calls and hotspot, and its
gallery), a file beside the report. No network: no URL, font or script from anywhere else,
so the folder can be zipped and opened offline.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from wsi_atm.files import atomic_write_text, printable
from wsi_atm.outputs.paths import output_paths

if TYPE_CHECKING:
    from wsi_atm.batch.plan import Outcome


@dataclass(frozen=True)
class Column:
    key: str
    title: str
    numeric: bool


COLUMNS = (
    Column("slide", "Slide", False), Column("status", "Status", False),
    Column("candidates", "Candidates", True), Column("classified", "Classified", True),
    Column("atypical", "Atypical", True), Column("normal", "Normal", True),
    Column("fraction", "Atypical share [95% CI]", True),
    Column("estimate", "Estimated true share [95% CI]", True),
    Column("hotspot_mitoses", "Hotspot mitoses", True),
    Column("hotspot_atypical", "Hotspot atypical", True),
    Column("per_mm2", "Mitoses / mm² tissue", True),
    Column("review", "Flagged for review", True), Column("error", "Error", False),
)

STYLE = """
body{font:14px system-ui,sans-serif;margin:24px;color:#1e1e1e}
table{border-collapse:collapse;width:100%}
th,td{border-bottom:1px solid #ddd;padding:4px 8px;text-align:left;white-space:nowrap}
th{cursor:pointer;background:#f4f4f4;position:sticky;top:0}
th.asc::after{content:" \\25B2"}th.desc::after{content:" \\25BC"}
td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.slide{cursor:pointer}tr.slide:hover{background:#f0f6ff}
tr.failed td{color:#a00}tr.detail td{background:#fafafa}
tr.detail img{max-width:100%;border:1px solid #ccc}
.muted{color:#777}.flag{color:#a00;white-space:normal}
"""

# Sorting, row toggling and the #sort= hash; marks each picture once loaded (data-loaded).
SCRIPT = """
(function(){
  var table=document.getElementById('cohort'), body=table.tBodies[0];
  function pairs(){var rows=[].slice.call(body.rows),out=[];
    for(var i=0;i<rows.length;i+=2){out.push([rows[i],rows[i+1]]);}return out;}
  function sortBy(key,desc){
    var th=table.querySelector('th[data-key="'+key+'"]'); if(!th){return;}
    var numeric=th.dataset.numeric==='1', p=pairs();
    p.sort(function(a,b){var x=a[0].getAttribute('data-'+key)||'',
      y=b[0].getAttribute('data-'+key)||'';
      if(numeric){x=x===''?-Infinity:parseFloat(x);y=y===''?-Infinity:parseFloat(y);}
      var c=x<y?-1:(x>y?1:0);return desc?-c:c;});
    p.forEach(function(r){body.appendChild(r[0]);body.appendChild(r[1]);});
    [].forEach.call(table.tHead.rows[0].cells,function(c){c.className='';});
    th.className=desc?'desc':'asc'; document.body.dataset.sorted=(desc?'-':'')+key;
  }
  [].forEach.call(table.tHead.rows[0].cells,function(th){
    th.addEventListener('click',function(){sortBy(th.dataset.key,th.className==='asc');});});
  pairs().forEach(function(r){r[0].addEventListener('click',function(){
    r[1].hidden=!r[1].hidden;});});
  [].forEach.call(document.images,function(img){
    function mark(){img.dataset.loaded=img.naturalWidth>0?'1':'0';}
    if(img.complete){mark();}else{img.addEventListener('load',mark);
      img.addEventListener('error',mark);}});
  var m=/sort=(-?)([a-z0-9-]+)/.exec(location.hash); if(m){sortBy(m[2],m[1]==='-');}
  document.body.dataset.ready=String(pairs().length);
})();
"""


def _pct(value: Any) -> str:
    return f"{100 * value:.1f}%" if isinstance(value, int | float) else ""


def _with_ci(block: dict[str, Any] | None) -> tuple[str, Any]:
    if not block or block.get("value") is None:
        return "", None
    ci = block.get("ci95") or [None, None]
    text = _pct(block["value"])
    if ci[0] is not None and ci[1] is not None:
        text += f" [{_pct(ci[0])}, {_pct(ci[1])}]"
    return text, block["value"]


FLAG = " (flagged: may not hold; click the row)"


def _estimate_warning(summary: dict[str, Any]) -> Any:
    """The flag on a summary's corrected estimate, if any."""
    return (summary.get("atypical_fraction_corrected") or {}).get("warning")


def _flagged(cell: tuple[str, Any], warning: Any) -> tuple[str, Any]:
    """An estimate's cell marked when its summary flags it: the data contradict the card, or
    the slide lies beyond what the estimate was validated at (the console, the review picture
    and cohort.csv say so; the report showed it as certain)."""
    return (cell[0] + FLAG, cell[1]) if warning and cell[0] else cell


def row_values(o: Outcome) -> dict[str, tuple[str, Any]]:
    """Per column: the text shown and the value sorted on."""
    s = o.summary
    counts = s.get("counts") or {}
    hot = s.get("hotspot") or {}
    tissue = s.get("tissue") or {}
    density = tissue.get("mitoses_per_mm2")

    def num(v: Any) -> tuple[str, Any]:
        return ("" if v is None else str(v)), v

    return {
        "slide": (printable(o.job.slide.name),) * 2, "status": (str(o.status), str(o.status)),
        "candidates": num(counts.get("candidates")), "classified": num(counts.get("classified")),
        "atypical": num(counts.get("atypical")), "normal": num(counts.get("normal")),
        "fraction": _with_ci(s.get("atypical_fraction")),
        "estimate": _flagged(_with_ci(s.get("atypical_fraction_corrected")),
                             _estimate_warning(s)),
        "hotspot_mitoses": _hotspot_count(hot), "hotspot_atypical": num(hot.get("atypical")),
        "per_mm2": ((f"{density:.2f}" if isinstance(density, float) else ""), density),
        "review": num(counts.get("review")), "error": (o.error, o.error),
    }


def _hotspot_count(hot: dict[str, Any]) -> tuple[str, Any]:
    """The hotspot's count, with its ceiling where the search stopped early (the summary, the
    cohort.csv warnings and the picture say it; the report's cell showed the count alone)."""
    mitoses = hot.get("mitoses")
    if mitoses is None:
        return "", None
    if hot.get("exact") is False:
        return f"{mitoses} (search stopped: at most {hot.get('mitoses_upper_bound')})", mitoses
    return str(mitoses), mitoses


def _attr(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _row(o: Outcome, out_dir: Path) -> str:
    values = row_values(o)
    data = " ".join(f'data-{c.key.replace("_", "-")}="{_attr(values[c.key][1])}"'
                    for c in COLUMNS)
    cells = "".join(f'<td class="{"num" if c.numeric else ""}">'
                    f"{html.escape(values[c.key][0])}</td>" for c in COLUMNS)
    # Only a finished slide's files are this run's: a failed slide's are removed, and any
    # file of its name there now is not its result, so none is shown beside its failure.
    paths = output_paths(o.job.slide.name, out_dir) if o.status in ("ok", "skipped") else {}
    links = [(k, p.name) for k, p in paths.items() if k != "png" and p.is_file()]
    png = paths.get("png")
    if png is not None and png.is_file():
        picture = (f'<img src="{_attr(quote(png.name))}" loading="eager" '
                   f'alt="review picture of {_attr(printable(o.job.slide.name))}">')
    else:
        picture = '<p class="muted">no review picture from this run</p>'
    files = " · ".join(f'<a href="{_attr(quote(name))}">{html.escape(name)}</a>'
                       for _, name in links)
    # The summary's flags, which the table's numbers do not show (upsampled crops, a hotspot
    # larger than the tissue, an estimate that may not hold).
    warning = _estimate_warning(o.summary)
    flags = [f"Estimated true share flagged: {warning}"] if warning else []
    flags += [str(w) for w in o.summary.get("warnings") or []]
    flag = "".join(f'<p class="flag">{html.escape(w)}</p>' for w in flags)
    detail = (f'<tr class="detail" hidden><td colspan="{len(COLUMNS)}">{flag}{picture}'
              f'<p>{files}</p></td></tr>')
    klass = "slide failed" if o.status == "failed" else "slide"
    return f'<tr class="{klass}" {data}>{cells}</tr>{detail}'


def render_report(outcomes: list[Outcome], out_dir: Path, title: str = "wsi-atm cohort") -> str:
    head = "".join(f'<th data-key="{c.key.replace("_", "-")}" data-numeric="'
                   f'{1 if c.numeric else 0}">{html.escape(c.title)}</th>' for c in COLUMNS)
    rows = "".join(_row(o, out_dir) for o in outcomes)
    ok = sum(o.status in ("ok", "skipped") for o in outcomes)
    meta = json.dumps({"slides": len(outcomes), "with_results": ok})
    histogram = ('<p><img src="cohort.png" alt="atypical share across slides"></p>'
                 if (out_dir / "cohort.png").is_file() else "")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>{STYLE}</style></head>"
            f"<body data-meta='{_attr(meta)}'><h1>{html.escape(title)}</h1>"
            f"<p>{len(outcomes)} slides, {ok} with results. Click a column to sort, a row to "
            "see its review picture and files. Shares: Wilson 95% interval; the estimated "
            "true share is the card's correction with its interval (see each summary).</p>"
            f"{histogram}<table id=\"cohort\"><thead><tr>{head}</tr></thead><tbody>{rows}"
            f"</tbody></table><script>{SCRIPT}</script></body></html>\n")


def write_report(outcomes: list[Outcome], out_dir: Path) -> Path:
    path = out_dir / "report.html"
    atomic_write_text(path, render_report(outcomes, out_dir))
    return path
