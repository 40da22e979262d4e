"""Prints which specs csi-sanity skipped by itself, and why, from its JUnit report.

Usage: python3 csi-sanity/skipped.py <junit.xml>   (we pass no skip flags; every skip
listed here is csi-sanity's own decision from the capabilities the driver advertises)
"""
import sys
import xml.etree.ElementTree as ET

reasons = {}
for case in ET.parse(sys.argv[1]).iter("testcase"):
    skipped = case.find("skipped")
    if skipped is not None:
        reason = (skipped.get("message") or "").replace("skipped - ", "").strip()
        reasons.setdefault(reason, []).append(case.get("name"))
for reason, names in sorted(reasons.items()):
    print(f"csi-sanity skipped {len(names)} spec(s): {reason}")
