"""The sandbox device: an x86 "combined" disk on loop devices, booted in new namespaces with
``upgraded`` as PID 1 (DESIGN.md, test tier 2). Used by the sandbox tests and the README's demo."""
