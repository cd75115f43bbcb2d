"""Ray Data jobs, the LanceDB store and the `shoplens` CLI: the only room that knows Ray and LanceDB."""
