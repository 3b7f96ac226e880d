from django.http import JsonResponse

from .tasks import send_receipt


def place_order(request):
    order_id = int(request.POST["order_id"])
    send_receipt.enqueue(order_id, email=request.POST["email"])
    return JsonResponse({"order": order_id}, status=202)
