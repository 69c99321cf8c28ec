"""Streamlit entry point (`steel dashboard` runs it): login gate, shared sidebar, navigation.

Pages: Live (operators, refreshes itself), History (engineers), Health (services and throughput).
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from dashboard.auth import SESSION_KEY, login_gate, logout
from dashboard.config import load_dashboard_settings
from dashboard.ui import OPERATOR_KEY

HERE = Path(__file__).resolve().parent

st.set_page_config(
    page_title="Steel inspection", page_icon=":material/precision_manufacturing:", layout="wide"
)
settings = load_dashboard_settings()
# Streamlit without --server.address listens on every interface: "" counts as beyond localhost.
if not login_gate(settings, str(st.get_option("server.address") or "")):
    st.stop()

pages = [
    st.Page(
        str(HERE / "live_page.py"), title="Live", icon=":material/monitoring:", url_path="live", default=True
    ),
    st.Page(str(HERE / "history_page.py"), title="History", icon=":material/history:", url_path="history"),
    st.Page(
        str(HERE / "health_page.py"), title="Health", icon=":material/health_and_safety:", url_path="health"
    ),
]
page = st.navigation(pages)
with st.sidebar:
    st.text_input("Operator", key=OPERATOR_KEY, max_chars=64, help="your name, stored with each verdict")
    if st.session_state.get(SESSION_KEY):
        st.button("Log out", on_click=logout)
page.run()
