"""Streamlit helpers shared by the pages (cached loaders, clip picker, plots)."""
