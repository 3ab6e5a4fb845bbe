"""What a flip matrix says, as the paper analyses it: Wilson intervals (`stats`), the matrix and its CSV
(`flip_matrix`), symmetry (`symmetry`), dominant targets, class pairs and catch-all classes (`structure`), minimal
norms (`min_norms`), the white-noise probe (`noise`) and agreement between two engines' runs (`agreement`)."""
