from jaxvna.evaluation import targets


def test_target_cells_state_the_floor_and_the_verdict():
  assert targets.target_cells(0.81, 0.8) == ">= 0.8 | met"
  assert targets.target_cells(0.8, 0.8) == ">= 0.8 | met"  # a floor: reaching it meets it
  assert targets.target_cells(0.79, 0.8) == ">= 0.8 | NOT met"
  assert targets.target_cells(0.79, None) == " | "
