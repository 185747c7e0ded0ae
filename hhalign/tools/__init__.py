"""Tools around finished runs: ``export`` (Hugging Face folders), ``plot`` (curves), ``summary`` (the
end-of-run summary and the table of runs), ``use`` (``hhalign score`` and ``hhalign generate``)."""
