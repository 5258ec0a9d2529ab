"""Facts about Polycom phones and file formats that both the controller (fleet) and the virtual lab (hil) use.

It imports neither package: fleet must never import the lab, and the lab should
not need the controller to load its own files.
"""
