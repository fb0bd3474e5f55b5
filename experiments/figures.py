"""What the report commands share: matplotlib without a display, a figure saved to its path,
a sweep's swept columns, mean ± std as text."""

import pathlib


def pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save(fig, path: pathlib.Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    pyplot().close(fig)


def axes_of(rows: list[dict]) -> list[str]:
    """The swept columns of a results.csv (those before `seed`)."""
    columns = list(rows[0])
    return columns[:columns.index("seed")]


def fmt_ms(s, scale: float = 100.0, digits: int = 1) -> str:
    """(mean, std, n) as "mean ± std" (x scale), the mean alone for one value, "" for None."""
    if s is None:
        return ""
    mean, std, n = s
    if n == 1:
        return f"{scale * mean:.{digits}f}"
    return f"{scale * mean:.{digits}f} ± {scale * std:.{digits}f}"
