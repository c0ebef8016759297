"""Chaos suite (issue 5): a real cluster under SIGKILL, SIGSTOP, power loss and partitions.

plan.py draws every random choice from the seed; netns.py puts the orchestrators in network
namespaces when the machine allows (else loopback, and the partition is skipped with the
reason); faults.py injects and undoes the faults; workload.py runs two clients and a progress
monitor; evidence.py collects the final state of every node and checks.py judges it; runner.py
ties one run together and report.py prints it. `python -m tests.chaos --seed N --minutes M`.
"""
