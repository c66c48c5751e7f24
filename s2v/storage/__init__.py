"""Storage: reading the pipeline's inputs and writing its outputs (local folders, http(s), S3, Cloudflare R2).

Above settings and errors, below the records: flows, tasks, the ledger, the inbox and the RunPod handler
all use it, and it imports neither Prefect nor torch.

- `locations`: what a URI is (scheme, s3 bucket/key, safe output keys) and where a key lives.
- `redaction`: showing URIs without the credentials they may carry.
- `transient`: which failures are worth retrying (the one retry policy lives in tasks/io_retries.py).
- `http_guard`: the SSRF guard for user-supplied URLs (public addresses only, DNS pinned).
- `fetch`: inputs, size-capped and hashed as they stream, into a work folder.
  `fetch_http` and `fetch_sources` read each kind of source; `download_limits` caps them.
- `atomic`: local files written whole (temporary name, then one rename).
- `s3`: the one S3 stack (s3fs) with the settings S3 and R2 both accept.
- `outputs`: writes, reads and listings at an output location, through fsspec.
- `write_once`: a record created only if its key is new (a hard link locally, If-None-Match on S3/R2).
- `reachability`: whether an output location can be written, asked before a batch starts.
"""
