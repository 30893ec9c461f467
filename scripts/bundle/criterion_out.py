"""Reads criterion's text output: {(bench id parts...): median throughput in T-units/s}."""
import re

UNITS = {"elem/s": 1e-12, "Kelem/s": 1e-9, "Melem/s": 1e-6, "Gelem/s": 1e-3, "Telem/s": 1.0}


def throughputs(path, id_pattern):
    """Median `thrpt` of each benchmark whose id line matches `id_pattern` (its groups are the
    key), in units of 10^12 per second (TFLOP/s when throughput is a FLOP count)."""
    out, current = {}, None
    for line in open(path):
        m = re.match(id_pattern, line.strip())
        if m:
            current = m.groups()
            continue
        m = re.search(r"thrpt:\s+\[\S+ \S+ (\S+) (\S+)", line)
        if m and current:
            out[current] = float(m.group(1)) * UNITS.get(m.group(2), float("nan"))
            current = None
    return out
