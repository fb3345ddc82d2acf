"""Stand-in for polars on the offline GPU machine (its 54 MB runtime wheel does not fit the 64 MiB transfer).
The ultralytics trainer reads results.csv with it when it saves a checkpoint; plots (the other use) are off."""
import csv
import io


def _num(v):
    try:
        return float(v)
    except ValueError:
        return v


class _Frame:
    def __init__(self, rows):
        self.rows = rows

    def to_dict(self, as_series=False):
        keys = list(self.rows[0]) if self.rows else []
        return {k.strip(): [_num(r[k]) for r in self.rows] for k in keys}


def read_csv(source, **_):
    text = source.decode() if isinstance(source, bytes) else open(source).read()
    return _Frame(list(csv.DictReader(io.StringIO(text))))
