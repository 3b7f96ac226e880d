"""The admin's form for schedules made there: every field checked as a ``SCHEDULED_JOBS`` entry is.

The values go through ``scheduler.conf.problems`` (the function ``manage.py check`` uses
for the settings), and each problem lands on its field with the same message. The task
is a choice among ``SCHEDULER_ADMIN_TASKS``, and checked against the list again in
``clean``, so that a crafted POST naming any other callable is refused whoever sends it.
"""

from __future__ import annotations

import json

from django import forms
from django.conf import settings

from .conf import KEYS, admin_tasks, problems, scheduled_jobs
from .models import Schedule

JSON_FIELDS = {"args": "[]", "kwargs": "{}"}


class JSONText(forms.CharField):
    """JSON typed as text; parsed in the form's ``clean`` so the message is the settings' own."""

    widget = forms.Textarea(attrs={"rows": 2, "cols": 60, "class": "vLargeTextField scheduler-json"})

    def prepare_value(self, value):
        if isinstance(value, str):
            return value
        return json.dumps(value, ensure_ascii=False)

    def has_changed(self, initial, data):
        try:
            return json.loads(self.prepare_value(initial)) != json.loads(data or "null")
        except ValueError:
            return True


class AdminScheduleForm(forms.ModelForm):
    task = forms.ChoiceField(choices=(), help_text="One of SCHEDULER_ADMIN_TASKS: only these may be scheduled here.")
    args = JSONText(required=False, initial="[]", help_text='Positional arguments, a JSON list: [1, "a"].')
    kwargs = JSONText(required=False, initial="{}", help_text='Keyword arguments, a JSON object: {"to": "ops"}.')
    queue_name = forms.CharField(required=False, max_length=64,
                                 help_text="Empty: the queue the task was declared with.")
    timezone = forms.CharField(max_length=64, help_text="The cron expression is read in this time zone.")

    class Meta:
        model = Schedule
        fields = ["name", "enabled", "task", "cron", "timezone", "misfire", "overlap", "args", "kwargs", "queue_name",
                  "priority"]
        help_texts = {"cron": "Five fields (minute hour day month weekday), or six with seconds last.",
                      "priority": "-100..100; higher runs first."}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        allowed = admin_tasks()
        current = self.instance.task if self.instance.pk else ""
        choices = [(path, path) for path in allowed]
        if current and current not in allowed:  # taken off the list since: shown, refused on save
            choices.insert(0, (current, f"{current} (no longer in SCHEDULER_ADMIN_TASKS)"))
        self.fields["task"].choices = [("", "---------"), *choices]
        if not self.instance.pk:
            self.fields["timezone"].initial = settings.TIME_ZONE
        if "name" in self.fields and self.instance.pk:
            self.fields["name"].disabled = True  # the name is the schedule's identity in its jobs' meta

    def clean(self):
        cleaned = super().clean()
        task = cleaned.get("task") or self.data.get(self.add_prefix("task"), "")
        if task and task not in admin_tasks():
            self.add_error("task", f"{task!r} is not in SCHEDULER_ADMIN_TASKS: only the tasks listed there may be "
                                   "scheduled from the admin.")
            return cleaned
        name = cleaned.get("name") or self.instance.name
        if not self.instance.pk and name in scheduled_jobs().names:
            self.add_error("name", f"{name!r} is the name of a SCHEDULED_JOBS entry: choose another name.")
        raw = {}
        for key, empty in JSON_FIELDS.items():
            text = (cleaned.get(key) or "").strip() or empty
            try:
                raw[key] = json.loads(text)
            except ValueError as exc:
                self.add_error(key, f"{key} {text!r} is not JSON ({exc})")
        for key in ("task", "cron", "timezone", "misfire", "overlap", "priority", "queue_name"):
            if key in cleaned and cleaned[key] not in (None, ""):
                raw[key] = cleaned[key]
        if "queue_name" not in raw and task in admin_tasks():
            raw["queue_name"] = self._task_queue(task)
        for problem in problems(name or "?", raw):
            field = problem.key if problem.key in KEYS and problem.key in self.fields else None
            if field is None or field not in self.errors:
                self.add_error(field, problem.message)
        if not self.errors:
            cleaned.update({key: raw[key] for key in ("args", "kwargs", "queue_name") if key in raw})
            cleaned["cron"] = " ".join(cleaned["cron"].split())
        return cleaned

    @staticmethod
    def _task_queue(path: str) -> str:
        from jobs.exceptions import JobError
        from jobs.resolve import resolve_task

        try:
            return getattr(resolve_task(path), "queue_name", None) or "default"
        except JobError:
            return "default"

    def _post_clean(self):
        # The parsed JSON and the task's queue go onto the instance, not the typed text.
        super()._post_clean()
        for key in ("args", "kwargs", "queue_name"):
            if key in self.cleaned_data and not self.errors.get(key):
                setattr(self.instance, key, self.cleaned_data[key])
