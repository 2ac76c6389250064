"""The distilled-set format: the folder every method writes (``distilled``), its dataset card
(``card``), checks (``verify``), exports (``export``) and the static page (``report``)."""
