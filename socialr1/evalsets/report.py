"""The results table: one row per benchmark, the paper's Overall (the mean over its eight
benchmarks, only when all eight were asked), the paper's own Overall rows beside it only when all
eight were asked in full (like with like), and warnings for completions cut at the token limit."""

from socialr1.evalsets import SUITES

# Overall accuracy reported by Social-R1 (Wu et al., "Social-R1: Towards Human-like Social Reasoning
# in LLMs", arXiv 2603.09249), main results table, mean over its eight benchmarks; numbers as
# quoted in this project's issue 11. Per-benchmark numbers are not included: no source found here
# names the model each of them belongs to.
PAPER_SOURCE = "Social-R1 (arXiv 2603.09249), main results table, Overall column"
PAPER_OVERALL = {
    "Qwen3-4B": 0.582,
    "SocialR1-4B": 0.688,
    "Qwen3-8B": 0.588,
    "SocialR1-8B": 0.727,
    "DeepSeek-R1": 0.707,
    "o3 (CoT)": 0.716,
}
COLUMNS = ("items", "orders", "accuracy", "all_orders_correct", "parse_failure", "format", "truncated",
           "mean_completion_tokens", "items_per_s")
HEADERS = ("benchmark", "items", "orders", "acc", "all-orders", "parse-fail", "format", "cut", "tokens", "items/s")
TRUNCATED_WARN = 0.1  # a share of completions cut at the token limit worth a warning


def overall(benchmarks: dict[str, dict], suite: str = "social-r1") -> dict:
    """The suite's mean accuracy when every one of its benchmarks was asked (else None: a mean over
    fewer is another number); `comparable` when all were asked in full, as the paper's Overall."""
    names = SUITES[suite]
    missing = [b for b in names if b not in benchmarks]
    subsets = [b for b in names if b in benchmarks and benchmarks[b].get("subset")]
    mean = None if missing else sum(benchmarks[b]["accuracy"] for b in names) / len(names)
    return {"accuracy": mean, "present": len(names) - len(missing), "of": len(names), "missing": missing,
            "subsets": subsets, "comparable": not missing and not subsets}


def _cells(name: str, row: dict) -> list[str]:
    def fmt(key: str) -> str:
        value = row.get(key)
        if value is None:
            return "-"
        return str(value) if isinstance(value, int) else f"{value:.3f}" if key != "mean_completion_tokens" else f"{value:.1f}"
    return [name] + [fmt(k) for k in COLUMNS]


def rows(results: dict) -> list[list[str]]:
    out = [_cells(name, r) for name, r in results["benchmarks"].items()]
    total, blank = results["overall"], [""] * (len(HEADERS) - 4)
    if total["accuracy"] is not None:
        label = f"Overall ({total['of']} benchmarks{'' if total['comparable'] else ', subsets'})"
        out.append([label, "", "", f"{total['accuracy']:.3f}"] + blank)
    if total["comparable"]:
        for model, value in results.get("compare", {}).get("overall", {}).items():
            out.append([f"paper: {model}", "", "", f"{value:.3f}"] + blank)
    return out


def table(results: dict) -> str:
    """The printed report: the main table, then accuracy per category and what is missing."""
    body = [list(HEADERS)] + rows(results)
    widths = [max(len(r[c]) for r in body) for c in range(len(HEADERS))]
    lines = ["  ".join(cell.ljust(w) if c == 0 else cell.rjust(w) for c, (cell, w) in enumerate(zip(r, widths)))
             for r in body]
    for name, r in results["benchmarks"].items():
        if r["categories"]:
            lines.append(f"{name}: " + ", ".join(f"{c} {v:.3f}" for c, v in r["categories"].items()))
    lines += _footer(results)
    return "\n".join(lines)


def markdown(results: dict) -> str:
    n = results["settings"]["limit"]
    limit = f"`--limit {n}` (the first {n} items of each benchmark)" if n else "`--limit` none (every item)"
    head = (f"# Evaluation of {results['model']}\n\nprompt mode `{results['mode']}`, thinking {results['thinking']}, "
            f"`--max-new-tokens {results['settings']['max_new_tokens']}`, {limit}\n\n")
    body = [list(HEADERS)] + rows(results)
    md = ["| " + " | ".join(r) + " |" for r in body]
    md.insert(1, "|" + "---|" * len(HEADERS))
    cats = [f"- {name}: " + ", ".join(f"{c} {v:.3f}" for c, v in r["categories"].items())
            for name, r in results["benchmarks"].items() if r["categories"]]
    notes = [f"- {name}: {r['note']}" for name, r in results["benchmarks"].items() if r.get("note")]
    return head + "\n".join(md + ["", "Accuracy per category:", *cats, "", "Sources:", *notes, "", *_footer(results)]) + "\n"


def _footer(results: dict) -> list[str]:
    total, benches, lines = results["overall"], results["benchmarks"], []
    if total["missing"]:
        why = [f"{b} ({results['missing'].get(b, 'not asked').split(';')[0]})" for b in total["missing"]]
        lines.append(f"no Overall ({total['present']} of the paper's {total['of']} benchmarks here); "
                     f"missing: {', '.join(why)}")
    if subsets := [f"{name} ({r['subset']})" for name, r in benches.items() if r.get("subset")]:
        lines.append(f"asked on subsets: {', '.join(subsets)}")
    if "compare" in results:
        lines.append(f"paper rows: {results['compare']['source']}" if total["comparable"] else
                     "paper rows not shown: the paper's Overall is over all its 8 benchmarks in full, and this run "
                     "is not (its per-benchmark numbers are not included here, see socialr1/evalsets/report.py)")
    if cut := [f"{name} {r['truncated']:.0%}" for name, r in benches.items() if r.get("truncated", 0) >= TRUNCATED_WARN]:
        lines.append(f"warning: completions cut at --max-new-tokens {results['settings']['max_new_tokens']}: "
                     f"{', '.join(cut)} of them (a cut reasoning gives no answer and counts as wrong); raise it")
    return lines
