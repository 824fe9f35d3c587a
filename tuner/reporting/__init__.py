"""`tuner report`: one self-contained HTML page with its PNG charts, from the results database."""
