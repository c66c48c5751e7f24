"""Records: the manifest (read, checked, kept), the write-once ledger, row claims and the inbox.

Above storage (it writes through s2v.storage) and the model's torch-free knowledge (option limits,
checkpoint layout, memory estimates); below tasks and flows. No Prefect and no torch inside.
"""
