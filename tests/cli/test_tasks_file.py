"""Tasks-file mistakes end in one line naming the file, the task and the field (as the README
names it, snake_case), exit code 2, before anything is sent; never a traceback."""

from __future__ import annotations

import json

import pytest

from imagemesh.tasksfile import TasksFileError, load
from tests.cli.conftest import cli
from tests.conftest import ROOT, free_port

CASES = {
    "bad_json": ('[{"prompt": "x",}]', "bad_json.json: not valid JSON: Expecting property name enclosed in "
                                       "double quotes at line 1, column 17"),
    "string_task": ('[{"prompt": "x"}, "a fox"]', 'string_task.json: task 1: expected a task object, '
                                                  'got the string "a fox"'),
    "tasks_not_list": ('{"tasks": {"prompt": "x"}}', "tasks_not_list.json: tasks: expected a list of tasks, "
                                                     "got an object"),
    "top_level_string": ('"a fox"', 'top_level_string.json: expected a list of tasks or an object with "tasks", '
                                    'got the string "a fox"'),
    "unknown_short_field": ('[{"prompt": "x", "num_output": 2}]',
                            "unknown_short_field.json: task 0: num_output: unknown field (known here: prompt, "
                            "model, providers, num_outputs, race, input, inline_outputs, output_filename, "
                            "idempotency_key, generate, enhance, then_enhance, labels)"),
    "unknown_nested_field": ('[{"generate": {"prompt": "x", "inlineOutput": true}}]',
                             "unknown_nested_field.json: task 0: generate.inlineOutput: unknown field (known here: "
                             "prompt, model, providers, race, num_outputs, input, inline_outputs)"),
    "wrong_type": ('[{"prompt": "x"}, {"prompt": "y", "num_outputs": "three"}]',
                   'wrong_type.json: task 1: num_outputs: expected an integer, got the string "three"'),
    "providers_not_list": ('[{"prompt": "x", "providers": "local"}]',
                           'providers_not_list.json: task 0: providers: expected a list, got the string "local"'),
    "then_enhance_type": ('[{"prompt": "x", "then_enhance": {"upscale": 2, "restore_faces": "yes"}}]',
                          'then_enhance_type.json: task 0: then_enhance.restore_faces: expected true or false, '
                          'got the string "yes"'),
    "missing_image": ('[{"enhance": {"image_path": "no-such-face.jpg"}}]',
                      "missing_image.json: task 0: enhance.image_path: cannot read no-such-face.jpg: "
                      "No such file or directory"),
    "no_prompt": ('[{"output_filename": "a.png"}]',
                  "no_prompt.json: task 0: prompt: missing (a task needs a prompt, or a generate or enhance object)"),
    "empty": ("[]", "empty.json: tasks: no tasks"),
    "unknown_file_field": ('{"tasks": [{"prompt": "x"}], "credential": {}}',
                           "unknown_file_field.json: credential: unknown field (known: tasks, credentials, batch_id)"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_bad_tasks_file_is_one_line_and_exit_2(tmp_path, name):
    text, message = CASES[name]
    (tmp_path / f"{name}.json").write_text(text)
    ran = _submit(tmp_path, f"{name}.json")
    assert ran.code == 2, ran
    assert ran.err_lines == [f"imagemesh: {tmp_path / name}.json: {message.split(': ', 1)[1]}"], ran.err
    assert ran.out == ""


def _submit(tmp_path, filename):
    """Nothing listens at the address: the file is checked before any connection is tried."""
    return cli("submit", str(tmp_path / filename), "--gateway", f"127.0.0.1:{free_port()}", "--api-key", "k",
               timeout=20)


def test_a_missing_tasks_file_is_one_line_and_exit_2(tmp_path):
    ran = _submit(tmp_path, "nothing-here.json")
    assert ran.code == 2
    assert ran.err_lines == [f"imagemesh: {tmp_path / 'nothing-here.json'}: cannot read it: No such file or directory"]


def test_a_token_of_the_wrong_type_is_not_echoed(tmp_path):
    path = tmp_path / "creds.json"
    path.write_text(json.dumps({"tasks": [{"prompt": "x"}], "credentials": {"replicate": 9876543210123}}))
    with pytest.raises(TasksFileError) as caught:
        load(path)
    assert str(caught.value) == f"{path}: credentials.replicate: expected the token as a string, got a number"
    assert "9876543210123" not in str(caught.value)


def test_the_example_and_both_forms_load(tmp_path):
    tasks, credentials, batch_id = load(ROOT / "examples" / "tasks.json")
    assert len(tasks) == 9 and tasks[6].then_enhance.upscale == 2
    (tmp_path / "face.png").write_bytes(b"\x89PNG not really")
    path = tmp_path / "forms.json"
    path.write_text(json.dumps({"batch_id": "b1", "credentials": {"fal": "t"}, "tasks": [
        {"prompt": "x", "num_outputs": "2", "input": {"seed": 1, "nested": [1, {"a": None}]}, "labels": {"k": "v"}},
        {"generate": {"prompt": "y", "numOutputs": 3}, "outputFilename": "y.png"},
        {"enhance": {"image_path": "face.png", "upscale": 4, "fidelity": 0.7}},
        {"enhance": {"image_url": "https://example.com/f.png"}, "output_filename": "f.png"}]}))
    tasks, credentials, batch_id = load(path)
    assert (batch_id, credentials) == ("b1", {"fal": "t"})
    assert tasks[0].generate.num_outputs == 2 and tasks[0].generate.input["nested"][1]["a"] is None
    assert (tasks[1].generate.num_outputs, tasks[1].output_filename) == (3, "y.png")
    assert tasks[2].enhance.image == b"\x89PNG not really" and tasks[2].enhance.upscale == 4
    assert tasks[3].enhance.image_url == "https://example.com/f.png"
