"""The HTTP face of a project (`loradex serve`, needs `loradex[server]`): `app` wires the routers of `openai`
(the OpenAI-compatible API) and `admin` (adapters, documents, router) with `auth` (API keys), `errors` (one
error body and status table), `metrics` (Prometheus) and `batcher` (mixed-adapter batches)."""
