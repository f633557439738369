"""Worker processes: the entry point (``main``), the loop that receives work
(``loop``) and the running of one task (``execute``)."""
