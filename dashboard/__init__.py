"""Dashboard: where defects are shown. Streamlit pages for operators and engineers."""
