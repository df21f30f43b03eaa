"""Test and demo generators (installed as `longvid.synthetic`): synthetic videos, corpora with planted faults, token
shards. They may import from every room; no production module (jobs except jobs/demo.py, pipelines, operators,
model, manifests) imports them."""
