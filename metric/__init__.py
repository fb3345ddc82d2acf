"""The metric stage: an embedding space where the look-alike classes separate, searched with FAISS.

    metric train --from runs/classify/<run> --hard-classes 0,2,4,6   # triplet loss on the classifier's trunk
    metric index runs/metric/<run>                                     # FAISS index of the reference set
    metric lookup runs/metric/<run> --test-index 17 -k 10              # nearest reference items
    metric resolve runs/metric/<run> --classifier runs/classify/<run>  # kNN re-decision of unsure predictions

One concept per module: ``defaults`` (options, no heavy imports), ``model`` (the embedding net and its
checkpoints), ``mining`` (PML miners and the mined-triplet count), ``data`` (reference/query/training sets),
``evaluate`` (PML AccuracyCalculator figures and the t-SNE plot), ``train``, ``index`` (FAISS), ``lookup``,
``resolve`` and ``cli``.
"""
