"""Glassbox Chat core: plain, typed Python that never imports streamlit."""
