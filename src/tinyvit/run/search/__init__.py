"""Photo search: an index of a photo library (``tinyvit index``), queried by words, images or both
(``tinyvit search``). :class:`~tinyvit.run.search.index.Index` is ``tinyvit.Index``."""

from tinyvit.run.search.index import Hit, Index, UpdateSummary

__all__ = ["Hit", "Index", "UpdateSummary"]
