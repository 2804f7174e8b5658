from addon.util.watch import FileWatcher


def test_change_creation_and_deletion_call_back(tmp_path):
    seen = []
    path = tmp_path / "f.txt"
    path.write_text("a")
    w = FileWatcher()
    w.watch({path: lambda: seen.append(path.exists())})
    w.poll()
    assert seen == []  # the state at watch() time counts as seen
    path.write_text("bb")
    w.poll()
    path.unlink()
    w.poll()
    path.write_text("c")
    w.poll()
    w.poll()
    assert seen == [True, False, True]
