"""``fashionkit serve``: a local web page over the runs directory -- runs with their figures and plots, the test
items a classifier doubts most, item pages with the classifier's probabilities and the FAISS neighbours, uploads,
and ``detect video`` results. Server-rendered (FastAPI + Jinja2), every asset local, read-only on runs.

``catalog`` finds runs and the files a page may show; ``lookups`` loads models and indexes once and answers
look-ups; ``app`` holds the routes (pages and the ``/api/...`` JSON they are built from); ``cli`` starts uvicorn.
"""
