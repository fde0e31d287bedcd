"""The results table: one row per benchmark, the paper's Overall (the mean over its eight
benchmarks, with how many were present), and the paper's own rows for comparison."""

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
COLUMNS = ("items", "orders", "accuracy", "all_orders_correct", "parse_failure", "format",
           "mean_completion_tokens", "items_per_s")
HEADERS = ("benchmark", "items", "orders", "acc", "all-orders", "parse-fail", "format", "tokens", "items/s")


def overall(benchmarks: dict[str, dict], suite: str = "social-r1") -> dict:
    present = [b for b in SUITES[suite] if b in benchmarks]
    mean = sum(benchmarks[b]["accuracy"] for b in present) / len(present) if present else None
    return {"accuracy": mean, "present": len(present), "of": len(SUITES[suite]),
            "missing": [b for b in SUITES[suite] if b not in benchmarks]}


def _cells(name: str, row: dict) -> list[str]:
    def fmt(key: str) -> str:
        value = row.get(key)
        if value is None:
            return "-"
        return str(value) if isinstance(value, int) else f"{value:.3f}" if key != "mean_completion_tokens" else f"{value:.1f}"
    return [name] + [fmt(k) for k in COLUMNS]


def rows(results: dict) -> list[list[str]]:
    out = [_cells(name, r) for name, r in results["benchmarks"].items()]
    total = results["overall"]
    if total["accuracy"] is not None:
        out.append([f"Overall ({total['present']}/{total['of']})", "", "", f"{total['accuracy']:.3f}"] + [""] * 5)
    for model, value in results.get("compare", {}).get("overall", {}).items():
        out.append([f"paper: {model}", "", "", f"{value:.3f}"] + [""] * 5)
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
    head = f"# Evaluation of {results['model']}\n\nprompt mode `{results['mode']}`, thinking {results['thinking']}\n\n"
    body = [list(HEADERS)] + rows(results)
    md = ["| " + " | ".join(r) + " |" for r in body]
    md.insert(1, "|" + "---|" * len(HEADERS))
    cats = [f"- {name}: " + ", ".join(f"{c} {v:.3f}" for c, v in r["categories"].items())
            for name, r in results["benchmarks"].items() if r["categories"]]
    notes = [f"- {name}: {r['note']}" for name, r in results["benchmarks"].items() if r.get("note")]
    return head + "\n".join(md + ["", "Accuracy per category:", *cats, "", "Sources:", *notes, "", *_footer(results)]) + "\n"


def _footer(results: dict) -> list[str]:
    lines = []
    if results["overall"]["missing"]:
        lines.append("missing from Overall: " + ", ".join(
            f"{b} ({results['missing'].get(b, 'not asked').split(';')[0]})" for b in results["overall"]["missing"]))
    if "compare" in results:
        lines.append(f"paper rows: {results['compare']['source']}")
    return lines
