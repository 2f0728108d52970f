"""Load benchmark of the assignment path: ``python -m scripts.bench --help``.

See scripts/bench/README.md for the scenarios, what each one measures, and how to run them.
"""

# Tickets look alike in the product's database and in the ceiling app's fixed
# answer, so every target sends bodies of the same size.
TICKET_TITLE = "bench ticket"
TICKET_DESCRIPTION = "The customer reports a problem; the details follow in the thread."
