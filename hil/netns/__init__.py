"""The namespace lab: the same lab file run against a real Linux router, OpenSSH, net-snmp and Kamailio.

Only the phones are emulated. Every namespace, link and process is named
after the lab's `net` and recorded in a state file before it is created, so
`hil down` (or the next `hil up`) finds and removes it even after the lab
process was killed.
"""
