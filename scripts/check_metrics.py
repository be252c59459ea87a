"""Parses Prometheus text (stdin) with prometheus_client's own parser and prints its samples as
JSON: {"samples": [{"name", "labels", "value"}], "families": {name: type}}.

Used by the tests of txpipe's /metrics, so that the text is checked by a real Prometheus
parser rather than by txpipe's own reading of it."""

import json
import sys

from prometheus_client.parser import text_string_to_metric_families

samples = []
families = {}
for family in text_string_to_metric_families(sys.stdin.read()):
    families[family.name] = family.type
    for s in family.samples:
        samples.append({"name": s.name, "labels": s.labels, "value": s.value})
json.dump({"samples": samples, "families": families}, sys.stdout)
