"""Altair chart builders: one function per chart, DataFrame in and chart out."""
