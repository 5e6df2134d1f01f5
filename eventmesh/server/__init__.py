"""The sidecar daemon: HTTP, gRPC and admin servers in front of one Mesh.

The servers translate between the wire and Mesh calls only; the mesh does the work.
"""
