#!/usr/bin/python3
"""Parses Prometheus text exposition format on stdin with the Python client's own parser
(Debian's python3-prometheus-client, installed for /usr/bin/python3 by .ci/run) and prints its
samples as JSON: [[name, {label: value}, value], ...]. Exits non-zero if the parser refuses the
input. The tests of the launcher's /metrics endpoint read scrapes through it."""
import json
import sys

from prometheus_client.parser import text_string_to_metric_families

samples = [
    [s.name, s.labels, s.value]
    for family in text_string_to_metric_families(sys.stdin.read())
    for s in family.samples
]
json.dump(samples, sys.stdout)
