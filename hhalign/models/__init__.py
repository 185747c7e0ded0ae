"""Models: ``loading`` finds Hugging Face models and tokenizers by name, path or hhalign checkpoint
(``trained`` reads those); ``layout`` turns a typed batch into what attention reads (the shared-prompt
mask, the scored positions); ``forward`` runs a model over a batch with the LM head only where a log-prob
is read; ``tiny`` and ``importing`` build models offline."""
