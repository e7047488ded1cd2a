"""Scale-out benchmark: several picker processes, with and without shared routing state (issue 15)."""
