"""The instruments: timing and memory (``measure``), results files with provenance
(``results``), several processes (``distributed``), the workloads, and what every command line
shares (``cli``, ``commands``)."""
