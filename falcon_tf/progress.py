"""A progress bar for long work (downloads, conversions, exports)."""


class progress_bar:
    """A tqdm bar (over tensors, or `unit`), silent when stderr is not a terminal."""

    def __init__(self, description, unit="tensor"):
        self.description = description
        self.unit = unit
        self.bar = None

    def __enter__(self):
        return self

    def __call__(self, done, total):
        if self.bar is None:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=self.description, unit=self.unit, disable=None)
        self.bar.update(done - self.bar.n)

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.close()
